# Injected by bench/run_gpu.sh's configure retry (-DCMAKE_PROJECT_TOP_LEVEL_INCLUDES=...), after project():
# fixes the two things a torch wheel's CMake files have tripped on with new CUDA toolkits, without touching
# the project's CMakeLists.txt.
#  - CUDA 12.9+ ships NVTX 3 only (header-only CUDA::nvtx3); older Caffe2 cuda.cmake files fall back to the
#    removed CUDA::nvToolsExt target. Map it onto nvtx3 and tell torch's headers to use NVTX 3.
find_package(CUDAToolkit QUIET)
if(CUDAToolkit_FOUND AND NOT TARGET CUDA::nvToolsExt AND TARGET CUDA::nvtx3)
  add_library(CUDA::nvToolsExt INTERFACE IMPORTED)
  target_link_libraries(CUDA::nvToolsExt INTERFACE CUDA::nvtx3)
  target_compile_definitions(CUDA::nvToolsExt INTERFACE TORCH_CUDA_USE_NVTX3)
  message(STATUS "torch_cuda_compat: CUDA::nvToolsExt -> CUDA::nvtx3")
endif()
#  - cuDNN is not needed by mlxterp; the retry also passes -DCAFFE2_USE_CUDNN=OFF.
