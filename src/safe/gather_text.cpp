#include "safe/gather_text.h"

#include <algorithm>
#include <cstring>

namespace primus::safe {

std::vector<std::string> all_gather_text(parallel::Communicator& comm, const std::string& mine) {
  const int n = comm.size();
  const Device dev = comm.device();
  int64_t my_len = static_cast<int64_t>(mine.size());
  Tensor len_in = Tensor::from_blob(&my_len, {1}, DType::I64).to(dev);
  Tensor len_out = Tensor::zeros({n}, DType::I64, dev);
  comm.all_gather(len_out, len_in);
  comm.synchronize();
  const Tensor lens = len_out.to(Device::CPU);
  const int64_t* l = lens.data<int64_t>();
  const int64_t width = std::max<int64_t>(1, *std::max_element(l, l + n));

  std::vector<char> padded(static_cast<size_t>(width), 0);
  std::memcpy(padded.data(), mine.data(), mine.size());
  Tensor in = Tensor::from_blob(padded.data(), {width}, DType::U8).to(dev);
  Tensor out = Tensor::zeros({width * n}, DType::U8, dev);
  comm.all_gather(out, in);
  comm.synchronize();
  const Tensor host = out.to(Device::CPU);
  const char* p = static_cast<const char*>(host.raw());
  std::vector<std::string> texts;
  for (int r = 0; r < n; ++r) texts.emplace_back(p + r * width, static_cast<size_t>(l[r]));
  return texts;
}

}  // namespace primus::safe
