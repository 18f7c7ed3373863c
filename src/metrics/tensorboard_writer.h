// TensorBoard event files for scalars (loss, learning rate, grad norm, ...).
//
// Writes `events.out.tfevents.<unix seconds>.<hostname>.<pid>` in `dir` (the pid keeps two
// runs started in the same second apart; TensorBoard reads every file whose name contains
// "tfevents"). The first record is the "brain.Event:2" file-version event; each scalar is
// one Event{wall_time, step, Summary{Value{tag, simple_value}}}. Records are buffered in
// memory and reach the file on flush(): call it once per logged iteration.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace primus::metrics {

class TensorBoardWriter {
 public:
  // Creates `dir` (and parents) and a new event file in it.
  explicit TensorBoardWriter(const std::string& dir);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // `value` is stored as float32 (TensorBoard's simple_value). Non-finite values are kept
  // (TensorBoard shows NaN/Inf points), so a diverging loss stays visible.
  void add_scalar(std::string_view tag, double value, int64_t step);
  void add_scalars(const std::vector<std::pair<std::string, double>>& scalars, int64_t step);
  void flush();  // writes buffered records and fflush()es the file

  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
  std::string pending_;  // framed records not yet written
};

}  // namespace primus::metrics
