// Side-effect imports: each registers a KernelConfig or GradConfig with tfjs's registry.
import '../kernels/cpu/register';
import '../kernels/webgpu/register';
import '../kernels/tensorflow/register';
import './gradients/flash_attention_grad';
