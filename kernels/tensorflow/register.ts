// Registered by the tensorflow kernels (see kernels/tensorflow/). Placeholder until they land.
export {};
