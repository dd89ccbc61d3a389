/*
 * The subset of TensorFlow's stable C API that the op library uses, declared here from the
 * documented signatures in tensorflow/c/{tf_status,tf_tensor,ops,kernels}.h, because neither
 * TensorFlow's headers nor libtensorflow can be installed in this project's build environment
 * (npm and apt only). Every function is declared weak: the library links without
 * libtensorflow, the symbols bind to the libtensorflow that tfjs-node-gpu already loaded when
 * TF_LoadLibrary opens us, and a function missing from an older TensorFlow reads as null, which
 * registration checks (see missingSymbols() in flash_attention_op.cc) instead of crashing.
 *
 * Values of the enums are TensorFlow's (tf_datatype.h, tf_status.h); they are part of its ABI.
 */
#ifndef TFJS_FLASH_ATTENTION_TF_C_API_H_
#define TFJS_FLASH_ATTENTION_TF_C_API_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TF_WEAK __attribute__((weak))

typedef enum { TF_FLOAT = 1, TF_UINT8 = 4, TF_BOOL = 10 } TF_DataType;
typedef enum { TF_OK = 0, TF_INVALID_ARGUMENT = 3, TF_INTERNAL = 13, TF_UNIMPLEMENTED = 12 } TF_Code;
typedef unsigned char TF_Bool;

typedef struct TF_Status TF_Status;
typedef struct TF_Tensor TF_Tensor;
typedef struct TF_OpDefinitionBuilder TF_OpDefinitionBuilder;
typedef struct TF_ShapeInferenceContext TF_ShapeInferenceContext;
typedef struct TF_ShapeHandle TF_ShapeHandle;
typedef struct TF_KernelBuilder TF_KernelBuilder;
typedef struct TF_OpKernelConstruction TF_OpKernelConstruction;
typedef struct TF_OpKernelContext TF_OpKernelContext;

/* tf_tensor.h: attributes of TF_AllocateTemp; struct_size is the offset of the end of on_host. */
typedef struct TF_AllocatorAttributes {
  size_t struct_size;
  TF_Bool on_host; /* 1: host memory, 0: the device's */
} TF_AllocatorAttributes;
#define TF_ALLOCATOR_ATTRIBUTES_STRUCT_SIZE (offsetof(TF_AllocatorAttributes, on_host) + sizeof(TF_Bool))

/* tf_status.h */
TF_WEAK TF_Status* TF_NewStatus(void);
TF_WEAK void TF_DeleteStatus(TF_Status*);
TF_WEAK void TF_SetStatus(TF_Status* s, TF_Code code, const char* msg);
TF_WEAK TF_Code TF_GetCode(const TF_Status* s);
TF_WEAK const char* TF_Message(const TF_Status* s);

/* tf_tensor.h */
TF_WEAK void TF_DeleteTensor(TF_Tensor*);
TF_WEAK int TF_NumDims(const TF_Tensor*);
TF_WEAK int64_t TF_Dim(const TF_Tensor* tensor, int dim_index);
TF_WEAK void* TF_TensorData(const TF_Tensor*);
TF_WEAK TF_DataType TF_TensorType(const TF_Tensor*);

/* ops.h */
TF_WEAK TF_OpDefinitionBuilder* TF_NewOpDefinitionBuilder(const char* op_name);
TF_WEAK void TF_RegisterOpDefinition(TF_OpDefinitionBuilder* builder, TF_Status* status);
TF_WEAK void TF_OpDefinitionBuilderAddAttr(TF_OpDefinitionBuilder* builder, const char* attr_spec);
TF_WEAK void TF_OpDefinitionBuilderAddInput(TF_OpDefinitionBuilder* builder, const char* input_spec);
TF_WEAK void TF_OpDefinitionBuilderAddOutput(TF_OpDefinitionBuilder* builder, const char* output_spec);
TF_WEAK void TF_OpDefinitionBuilderSetShapeInferenceFunction(
    TF_OpDefinitionBuilder* builder,
    void (*shape_inference_func)(TF_ShapeInferenceContext* ctx, TF_Status* status));
TF_WEAK TF_ShapeHandle* TF_NewShapeHandle(void);
TF_WEAK void TF_DeleteShapeHandle(TF_ShapeHandle* handle);
TF_WEAK void TF_ShapeInferenceContextGetInput(TF_ShapeInferenceContext* ctx, int i,
                                              TF_ShapeHandle* handle, TF_Status* status);
TF_WEAK void TF_ShapeInferenceContextSetOutput(TF_ShapeInferenceContext* ctx, int i,
                                               TF_ShapeHandle* handle, TF_Status* status);
TF_WEAK void TF_ShapeInferenceContextWithRank(TF_ShapeInferenceContext* ctx, TF_ShapeHandle* handle,
                                              int64_t rank, TF_ShapeHandle* result, TF_Status* status);
TF_WEAK void TF_ShapeInferenceContextSubshape(TF_ShapeInferenceContext* ctx,
                                              TF_ShapeHandle* shape_handle, int64_t start,
                                              int64_t end, TF_ShapeHandle* result, TF_Status* status);
TF_WEAK void TF_ShapeInferenceContextConcatenateShapes(TF_ShapeInferenceContext* ctx,
                                                       TF_ShapeHandle* first, TF_ShapeHandle* second,
                                                       TF_ShapeHandle* result, TF_Status* status);

/* kernels.h */
TF_WEAK TF_KernelBuilder* TF_NewKernelBuilder(const char* op_name, const char* device_name,
                                              void* (*create_func)(TF_OpKernelConstruction*),
                                              void (*compute_func)(void*, TF_OpKernelContext*),
                                              void (*delete_func)(void*));
TF_WEAK void TF_RegisterKernelBuilder(const char* kernel_name, TF_KernelBuilder* builder,
                                      TF_Status* status);
TF_WEAK int TF_NumInputs(TF_OpKernelContext* ctx);
TF_WEAK void TF_GetInput(TF_OpKernelContext* ctx, int i, TF_Tensor** tensor, TF_Status* status);
TF_WEAK TF_Tensor* TF_AllocateOutput(TF_OpKernelContext* context, int index, TF_DataType dtype,
                                     const int64_t* dims, int num_dims, size_t len, TF_Status* status);
/* Since TensorFlow 2.5; null (weak) in older ones. */
TF_WEAK TF_Tensor* TF_AllocateTemp(TF_OpKernelContext* context, TF_DataType dtype, const int64_t* dims,
                                   int num_dims, TF_AllocatorAttributes* alloc_attrs, TF_Status* status);
TF_WEAK void TF_OpKernelContext_Failure(TF_OpKernelContext* ctx, TF_Status* status);
TF_WEAK void TF_OpKernelConstruction_Failure(TF_OpKernelConstruction* ctx, TF_Status* status);
TF_WEAK void TF_OpKernelConstruction_GetAttrFloat(TF_OpKernelConstruction* ctx, const char* attr_name,
                                                  float* val, TF_Status* status);
TF_WEAK void TF_OpKernelConstruction_GetAttrInt64(TF_OpKernelConstruction* ctx, const char* attr_name,
                                                  int64_t* val, TF_Status* status);
TF_WEAK void TF_OpKernelConstruction_GetAttrBool(TF_OpKernelConstruction* ctx, const char* attr_name,
                                                 TF_Bool* val, TF_Status* status);
TF_WEAK void TF_OpKernelConstruction_GetAttrString(TF_OpKernelConstruction* ctx, const char* attr_name,
                                                   char* val, size_t max_length, TF_Status* status);

#ifdef __cplusplus
}
#endif

#endif /* TFJS_FLASH_ATTENTION_TF_C_API_H_ */
