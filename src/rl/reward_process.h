// An external reward function: a process started once (`/bin/sh -c COMMAND`) and spoken to in
// JSON lines over its stdin/stdout, one request line then one answer line per completion.
//
// Request (one line, UTF-8 JSON; keys sorted):
//   {"completion": "...", "completion_tokens": 17, "finish_reason": "stop" | "length",
//    "prompt": "...", "record": {...the prompt's JSONL line, every key...}}
// Answer (one line): a number, or an object with a numeric "reward", e.g. 1.0 or {"reward": 0.5}.
// The process's stderr is the trainer's. At the end of the run its stdin is closed (EOF) and
// it is waited for. Errors name the command: a process that exits, an answer that is not a
// number, an answer longer than 1 MiB.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace primus::rl {

// One answer line -> the reward; errors name `command` and the line.
double parse_reward_answer(const std::string& line, const std::string& command);

class RewardProcess {
 public:
  explicit RewardProcess(std::string command);  // starts it; throws when it cannot start
  ~RewardProcess();
  RewardProcess(const RewardProcess&) = delete;
  RewardProcess& operator=(const RewardProcess&) = delete;

  // Sends one request and waits for its answer.
  double score(const nlohmann::json& request);
  const std::string& command() const { return command_; }

 private:
  std::string read_line();
  std::string command_;
  int fd_ = -1;   // our end of the socket pair (the child's stdin and stdout are the other end)
  int pid_ = -1;
  std::string pending_;  // bytes read past the last line
};

}  // namespace primus::rl
