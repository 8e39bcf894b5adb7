// The applier's two refusals: what the caller does with each differs.

/** The layer (its media type, its target, or something in it) is one this applier leaves to containerd:
 *  the caller removes the snapshot and applies the layer with containerd's Diff.Apply. */
export class UnsupportedLayerError extends Error {
  override readonly name = "UnsupportedLayerError";
}

/** The layer is not a valid tar (truncated, corrupt, or unsafe in a way containerd refuses too): the pull
 *  fails with this message. */
export class LayerFormatError extends Error {
  override readonly name = "LayerFormatError";
}
