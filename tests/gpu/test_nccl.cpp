// The NCCL communicators of ProcessGroups on device memory: every collective against the values
// the MPI communicator gives on the host (tests/parallel/test_communicator.cpp checks those).
// Needs one GPU per rank: skipped without a GPU or with fewer GPUs than ranks.
#include <mpi.h>
#include <catch2/catch.hpp>

#include <cstring>
#include <vector>

#include "gpu/gpu_compare.h"
#include "parallel/mpi_communicator.h"
#include "parallel/process_groups.h"
#if LINMOE_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_device.h"
#endif

using namespace linmoe;
using namespace linmoe::testing;

TEST_CASE("nccl: device collectives equal the MPI ones", "[gpu][mpi]") {
#if LINMOE_HAVE_CUDA
  int rank = 0, world = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  if (cuda_device_count() < world) {
    skip("fewer GPUs than ranks: NCCL test skipped");
    return;
  }
  auto gpu = make_cuda_backend(rank);
  auto& cuda = dynamic_cast<CudaBackend&>(*gpu);
  MpiCommunicator mpi_world(MPI_COMM_WORLD, "world");
  ProcessGroups groups(mpi_world, Layout{1, 1, world, 1, 1});
  groups.enable_device_groups(cuda.stream_handle(), gpu->allocator(),
                              [&](const Tensor& src, const Tensor& dst) { gpu->copy(src, dst); });
  Communicator& dev = groups.device_group(GroupKind::dp);
  Communicator& host = groups.dp();

  for (DType dtype : {DType::f32, DType::bf16, DType::f64, DType::i32}) {
    INFO(dtype_name(dtype));
    const std::int64_t n = 1000 + 7;
    HostTensor h(dtype, Shape{n * world});
    fill_ints(h, 17 + static_cast<std::uint64_t>(rank), 9);  // small integers: exact sums
    // all_reduce
    {
      HostTensor expect(dtype, Shape{n});
      std::memcpy(expect.t().data, h.t().data, expect.t().nbytes());
      host.all_reduce(expect.t());
      Buffer b(gpu->allocator(), expect.t().nbytes(), "t");
      const Tensor d = b.view(dtype, Shape{n});
      gpu->copy(h.t().slice(0, 0, n), d);
      dev.all_reduce(d);
      HostTensor got(dtype, Shape{n});
      gpu->copy(d, got);
      gpu->synchronize();
      CHECK(got.to_f64() == expect.to_f64());
    }
    // reduce_scatter and all_gather
    {
      HostTensor expect(dtype, Shape{n});
      host.reduce_scatter(h.t(), expect.t());
      Buffer bi(gpu->allocator(), h.t().nbytes(), "in"),
          bo(gpu->allocator(), expect.t().nbytes(), "o");
      const Tensor di = bi.view(dtype, h.t().shape), dout = bo.view(dtype, Shape{n});
      gpu->copy(h.t(), di);
      dev.reduce_scatter(di, dout);
      HostTensor got(dtype, Shape{n});
      gpu->copy(dout, got);
      gpu->synchronize();
      CHECK(got.to_f64() == expect.to_f64());
      HostTensor gathered(dtype, Shape{n * world}), expect_g(dtype, Shape{n * world});
      host.all_gather(expect.t(), expect_g.t());
      dev.all_gather(dout, di);
      gpu->copy(di, gathered);
      gpu->synchronize();
      CHECK(gathered.to_f64() == expect_g.to_f64());
    }
  }
  // send_recv around a ring.
  {
    const std::int64_t n = 33;
    HostTensor h(DType::f32, Shape{n});
    fill_ints(h, 5 + static_cast<std::uint64_t>(rank), 100);
    Buffer bs(gpu->allocator(), h.t().nbytes(), "s"), br(gpu->allocator(), h.t().nbytes(), "r");
    const Tensor ds = bs.view(DType::f32, Shape{n}), dr = br.view(DType::f32, Shape{n});
    gpu->copy(h.t(), ds);
    const int next = (rank + 1) % world, prev = (rank + world - 1) % world;
    dev.send_recv(ds, next, dr, prev);
    HostTensor got(DType::f32, Shape{n}), expect(DType::f32, Shape{n});
    host.send_recv(h.t(), next, expect.t(), prev);
    gpu->copy(dr, got);
    gpu->synchronize();
    CHECK(got.to_f64() == expect.to_f64());
  }
  // Host scalars go through MPI.
  CHECK(dev.all_reduce_sum(1.0) == static_cast<double>(world));
#else
  skip("a build without CUDA: NCCL test skipped");
#endif
}
