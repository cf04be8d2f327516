# find_package(Torch) and the settings it needs here; included by CMakeLists.txt and by its probe.
# The CUDA build's TorchConfig enables the CUDA language and looks for the CUDA toolkit (nvcc, cudart,
# nvrtc, ...): these two only matter for compiling CUDA sources, which the client has none of. They keep
# it from asking nvcc for C++20 (unknown to older CMake) and from compiling a program to probe the GPU.
if(NOT DEFINED CMAKE_CUDA_STANDARD)
  set(CMAKE_CUDA_STANDARD 17)
endif()
if(NOT DEFINED TORCH_CUDA_ARCH_LIST AND NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
  set(TORCH_CUDA_ARCH_LIST "8.0")
endif()
find_package(Torch REQUIRED)
