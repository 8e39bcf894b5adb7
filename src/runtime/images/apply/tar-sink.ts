// A tar stream fed in pieces of any size, each entry handed to a Target as its bytes arrive (a regular
// file's data is written straight from the pieces). The end is Go's archive/tar's: two zero blocks, one
// zero block then EOF, or EOF at a header boundary; anything after the end is ignored. Anything else that
// ends early is a truncated layer.

import { LayerFormatError, UnsupportedLayerError } from "./errors.js";
import {
  BLOCK,
  headerOnly,
  isZeroBlock,
  MAX_META_BYTES,
  merge,
  type Pending,
  parseHeader,
  parsePax,
} from "./header.js";
import type { Target } from "./target.js";

type State = "header" | "file" | "meta" | "skip" | "end";

export class TarSink {
  private state: State = "header";
  private readonly block = Buffer.alloc(BLOCK);
  private fill = 0;
  /** Bytes left in the current entry's data (file, meta or skip), then its padding. */
  private remaining = 0;
  private padding = 0;
  private zeroSeen = false;
  private meta: { type: string; pieces: Buffer[] } | undefined;
  private pending: Pending = { pax: new Map() };

  constructor(private readonly target: Target) {}

  get ended(): boolean {
    return this.state === "end";
  }

  feed(b: Buffer): void {
    let at = 0;
    while (at < b.length && this.state !== "end") {
      if (this.state === "header") {
        const n = Math.min(BLOCK - this.fill, b.length - at);
        b.copy(this.block, this.fill, at, at + n);
        this.fill += n;
        at += n;
        if (this.fill === BLOCK) {
          this.fill = 0;
          this.header();
        }
        continue;
      }
      if (this.remaining > 0) {
        const n = Math.min(this.remaining, b.length - at);
        const piece = b.subarray(at, at + n);
        if (this.state === "file") this.target.write(piece);
        else if (this.state === "meta") this.meta!.pieces.push(Buffer.from(piece));
        this.remaining -= n;
        at += n;
        if (this.remaining === 0) this.dataDone();
        continue;
      }
      const n = Math.min(this.padding, b.length - at);
      this.padding -= n;
      at += n;
      if (this.padding === 0) this.state = "header";
    }
  }

  /** At the end of the stream: throws unless the tar ended where it may. */
  end(): void {
    if (this.state === "end" || (this.state === "header" && this.fill === 0)) {
      this.state = "end";
      return;
    }
    throw new LayerFormatError("the layer's tar ends in the middle of an entry (a truncated layer)");
  }

  private header(): void {
    const b = this.block;
    if (isZeroBlock(b)) {
      if (this.zeroSeen) this.state = "end";
      this.zeroSeen = true;
      return;
    }
    if (this.zeroSeen) throw new LayerFormatError("a tar header after a zero block in the layer");
    const h = parseHeader(b);
    if (h.type === "L" || h.type === "K" || h.type === "x" || h.type === "g") {
      if (h.size > MAX_META_BYTES) throw new LayerFormatError(`a tar ${h.type} record of ${h.size} bytes`);
      this.meta = { type: h.type, pieces: [] };
      this.startData("meta", h.size);
      return;
    }
    const e = merge(h, this.pending);
    this.pending = { pax: new Map() };
    if (e.type === "S") throw new UnsupportedLayerError("a GNU sparse file in the layer");
    const size = headerOnly(e.type) ? 0 : e.size;
    if (e.type !== "0" && size > 0) {
      // An entry type with data that containerd does not write (it refuses the layer): let it say so.
      throw new UnsupportedLayerError(`a tar entry of type ${JSON.stringify(e.type)}`);
    }
    this.target.begin(e);
    this.startData("file", size);
  }

  private startData(state: State, size: number): void {
    this.state = state;
    this.remaining = size;
    this.padding = (BLOCK - (size % BLOCK)) % BLOCK;
    if (size === 0) this.dataDone();
  }

  private dataDone(): void {
    if (this.state === "file") this.target.finish();
    else if (this.state === "meta") this.metaDone();
    this.state = this.padding === 0 ? "header" : "skip";
  }

  private metaDone(): void {
    const m = this.meta!;
    this.meta = undefined;
    const data = Buffer.concat(m.pieces);
    if (m.type === "x") parsePax(data, this.pending.pax);
    else if (m.type === "L") this.pending.name = cstr(data);
    else if (m.type === "K") this.pending.linkname = cstr(data);
    // 'g': a global header changes nothing containerd writes.
  }
}

function cstr(b: Buffer): string {
  const nul = b.indexOf(0);
  return b.subarray(0, nul < 0 ? b.length : nul).toString("utf8");
}
