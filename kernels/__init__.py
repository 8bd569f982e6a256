"""Hand-written device kernels (backend stage) (CUDA C sources and Numba CUDA functions),
installed as graphc.kernels. Empty until the GPU backend lands."""
