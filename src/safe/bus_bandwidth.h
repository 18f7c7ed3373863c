// Algorithm and bus bandwidth of a collective, as nccl-tests defines them (its PERFORMANCE.md).
//
//   size S   the bytes of one rank's full buffer of the operation:
//              all_reduce       the tensor reduced (in = out = S)
//              all_gather       the gathered output (each rank contributes S/n)
//              reduce_scatter   the input (each rank keeps S/n)
//              all_to_all       the send buffer (S/n to each rank, itself included)
//              send_recv        the message one rank sends (and receives) in the ring shift
//   algbw  = S / t                    (t: the time of one operation, the slowest rank's)
//   busbw  = algbw * factor(op, n)    the rate each link must carry, comparable across n:
//              all_reduce                                  2 (n-1) / n
//              all_gather, reduce_scatter, all_to_all        (n-1) / n
//              send_recv                                   1
// For n = 1 the (n-1)/n factors are 0: a one-rank collective moves nothing over a link.
// Bandwidths are in GB/s = 1e9 bytes per second.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace primus::safe {

enum class CollectiveOp : uint8_t { AllReduce, AllGather, ReduceScatter, AllToAll, SendRecv };

// "all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv".
std::string_view collective_op_name(CollectiveOp op);
// Every op, in the order the preflight runs them.
const std::vector<CollectiveOp>& all_collective_ops();
// Parses one name (as collective_op_name writes it); throws naming the accepted values.
CollectiveOp parse_collective_op(std::string_view name);

// The busbw / algbw factor of `op` over `ranks` ranks (table above).
double bus_factor(CollectiveOp op, int ranks);
// S / t in GB/s; `seconds` > 0.
double algbw_gbps(int64_t bytes, double seconds);
double busbw_gbps(CollectiveOp op, int ranks, int64_t bytes, double seconds);

// The buffer size actually used for a requested size: rounded down to a whole number of
// `ranks` * `elem_bytes` (so that every rank's share is a whole number of elements), and at
// least one element per rank.
int64_t collective_bytes(int64_t requested, int ranks, int64_t elem_bytes);

// "1M" -> 1048576: an integer with an optional K, M or G suffix (powers of 1024, as
// nccl-tests' -b/-e). Throws naming `flag` when malformed or not positive.
int64_t parse_byte_size(std::string_view text, std::string_view flag);
// 1048576 -> "1 MiB", 1536 -> "1.5 KiB".
std::string format_bytes(int64_t bytes);

// min, min*f, min*f^2, ... up to and including max (nccl-tests' -b -e -f). Throws naming the
// flags when min > max or factor < 2.
std::vector<int64_t> size_sweep(int64_t min_bytes, int64_t max_bytes, int64_t factor);

}  // namespace primus::safe
