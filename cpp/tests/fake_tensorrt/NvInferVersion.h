// Fake TensorRT version macros (see NvInfer.h beside this file).
#pragma once
#define NV_TENSORRT_MAJOR 10
#define NV_TENSORRT_MINOR 8
#define NV_TENSORRT_PATCH 0
#define NV_TENSORRT_BUILD 43
