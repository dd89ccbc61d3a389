// Registered by the webgpu kernels (see kernels/webgpu/). Placeholder until they land.
export {};
