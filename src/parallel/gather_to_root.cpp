#include "parallel/gather_to_root.h"

#include <map>
#include <sstream>

#include "core/error.h"
#include "core/strings.h"

namespace primus::parallel {

namespace {

// Data travels as bytes (any dtype), in pieces that keep MPI's int counts in range.
constexpr int64_t kPieceBytes = int64_t{1} << 30;

template <typename Fn>
void for_each_piece(const Tensor& t, Fn&& fn) {
  const auto bytes = static_cast<int64_t>(t.nbytes());
  for (int64_t b = 0; b < bytes; b += kPieceBytes) {
    Tensor piece = Tensor::from_blob(static_cast<char*>(t.raw()) + b, {std::min(kPieceBytes, bytes - b)}, DType::U8,
                                     t.device());
    fn(piece);
  }
}

// "name\tF32\t2,3\n" per tensor (names hold no tabs or newlines: they are parameter names).
std::string encode(const NamedTensorList& list) {
  std::string s;
  for (const auto& [name, t] : list) {
    PRIMUS_CHECK(name.find_first_of("\t\n") == std::string::npos,
                 "gather_named_tensors_to_root: tensor name '{}' holds a tab or newline", name);
    s += name;
    s += '\t';
    s += safetensors_name(t.dtype());
    s += '\t';
    for (size_t i = 0; i < t.shape().size(); ++i) {
      if (i > 0) s += ',';
      s += std::to_string(t.shape()[i]);
    }
    s += '\n';
  }
  return s;
}

struct Meta {
  std::string name;
  DType dtype;
  Shape shape;
};

std::vector<Meta> decode(const std::string& s) {
  std::vector<Meta> out;
  std::istringstream in(s);
  std::string line;
  while (std::getline(in, line)) {
    const std::vector<std::string> f = split(line, '\t');
    PRIMUS_CHECK(f.size() == 3, "gather_named_tensors_to_root: bad metadata line '{}'", line);
    Meta m{f[0], dtype_from_safetensors(f[1]), {}};
    if (!f[2].empty())
      for (const std::string& d : split(f[2], ',')) m.shape.push_back(std::stoll(d));
    out.push_back(std::move(m));
  }
  return out;
}

Tensor on_device(const Tensor& t, Device d) { return t.device() == d ? t : t.to(d); }

}  // namespace

NamedTensorList gather_named_tensors_to_root(const NamedTensorList& mine, Communicator& group, int root) {
  PRIMUS_CHECK(root >= 0 && root < group.size(), "gather_named_tensors_to_root: root {} is not a rank of {}", root,
               group.describe());
  const Device dev = group.device();
  if (group.rank() != root) {
    const std::string meta = encode(mine);
    Tensor len = Tensor::empty({1}, DType::I64, dev);
    Tensor len_host = Tensor::empty({1}, DType::I64);
    len_host.data<int64_t>()[0] = static_cast<int64_t>(meta.size());
    len.copy_from(len_host);
    group.send(len, root);
    if (!meta.empty()) {
      Tensor bytes_host = Tensor::empty({static_cast<int64_t>(meta.size())}, DType::U8);
      std::copy(meta.begin(), meta.end(), bytes_host.data<char>());
      group.send(on_device(bytes_host, dev), root);
    }
    for (const auto& [name, t] : mine) {
      const Tensor src = on_device(t, dev);
      for_each_piece(src, [&](const Tensor& piece) { group.send(piece, root); });
    }
    group.synchronize();
    return {};
  }
  NamedTensorList out;
  std::map<std::string, std::pair<int, size_t>> owner;  // name -> (rank, index in out)
  auto add = [&](const std::string& name, Tensor t, int rank) {
    auto it = owner.find(name);
    if (it == owner.end()) {
      owner[name] = {rank, out.size()};
      out.emplace_back(name, std::move(t));
      return;
    }
    const Tensor& first = out[it->second.second].second;
    PRIMUS_CHECK(first.shape() == t.shape() && first.dtype() == t.dtype(),
                 "gather_named_tensors_to_root over {}: ranks {} and {} both hold '{}' but as {} and {}",
                 group.describe(), it->second.first, rank, name, first.describe(), t.describe());
  };
  for (int r = 0; r < group.size(); ++r) {
    if (r == root) {
      for (const auto& [name, t] : mine) add(name, t.device() == Device::CPU ? t.clone() : t.to(Device::CPU), r);
      continue;
    }
    Tensor len = Tensor::empty({1}, DType::I64, dev);
    group.recv(len, r);
    group.synchronize();
    const int64_t n = on_device(len, Device::CPU).data<int64_t>()[0];
    std::string meta;
    if (n > 0) {
      Tensor bytes = Tensor::empty({n}, DType::U8, dev);
      group.recv(bytes, r);
      group.synchronize();
      const Tensor host = on_device(bytes, Device::CPU);
      meta.assign(host.data<char>(), static_cast<size_t>(n));
    }
    for (const Meta& m : decode(meta)) {
      Tensor t = Tensor::empty(m.shape, m.dtype, dev);
      for_each_piece(t, [&](Tensor& piece) { group.recv(piece, r); });
      group.synchronize();
      add(m.name, on_device(t, Device::CPU), r);
    }
  }
  return out;
}

}  // namespace primus::parallel
