// The data plane: the only code that touches the kernel (namespaces, links, VXLAN, FDB/neighbour entries).
export * from "./addr.js";
export * from "./netns.js";
export * from "./overlay.js";
export * from "./render.js";
export * from "./runner.js";
