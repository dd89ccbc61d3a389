// Side-effect imports: each registers a KernelConfig or GradConfig with tfjs's registry. The
// tensorflow (CUDA) kernels are registered by the op on first use (kernels/tensorflow/register.ts).
import '../kernels/cpu/register';
import '../kernels/webgpu/register';
import '../gradients/flash_attention_grad';
