/**
 * The contract between the op and the kernels: kernel names, inputs and attributes, option
 * validation and normalisation, the dropout hash, window arithmetic, and the values every kernel
 * derives from shapes and attributes. It imports nothing of the package (test/layering.test.ts);
 * kernels/<backend>/ import only this, and src/ (the API) builds on both.
 */
export * from './kernel_names';
export * from './options';
export * from './dropout';
export * from './window';
export * from './problem';
