// Stand-in for c10's CUDA streams in the host build of cuda_bridge.cpp (test_csrc.py): the emulated
// launches run to completion when called, on no stream.
#pragma once
#include <c10/core/Device.h>

namespace c10::cuda {
struct CUDAStream {
  void* stream() const { return nullptr; }
};
inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex = -1) { return {}; }
}  // namespace c10::cuda
