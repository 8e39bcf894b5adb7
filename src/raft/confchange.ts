// The binary form of a ConfChange inside a log entry: [type u8][node id f64 BE][context...].
// The core must read it back when the entry is applied, so it lives here and not in the proto codec.

import { type ConfChange, ConfChangeType } from "./types.js";

export function encodeConfChange(cc: ConfChange): Uint8Array {
  const out = new Uint8Array(9 + cc.context.length);
  const dv = new DataView(out.buffer);
  dv.setUint8(0, cc.type);
  dv.setFloat64(1, cc.nodeId);
  out.set(cc.context, 9);
  return out;
}

export function decodeConfChange(b: Uint8Array): ConfChange {
  if (b.length < 9) throw new Error(`conf change entry too short (${b.length} bytes)`);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const type = dv.getUint8(0);
  if (!(type in ConfChangeType)) throw new Error(`unknown conf change type ${type}`);
  return { type: type as ConfChangeType, nodeId: dv.getFloat64(1), context: b.slice(9) };
}
