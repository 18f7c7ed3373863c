#include "rl/reward_process.h"

#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/strings.h"

namespace primus::rl {

namespace {
constexpr size_t kMaxLine = 1 << 20;
}

RewardProcess::RewardProcess(std::string command) : command_(std::move(command)) {
  PRIMUS_CHECK(!command_.empty(), "reward_command is empty");
  int sv[2];
  PRIMUS_CHECK(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0,
               "reward_command '{}': socketpair failed: {}", command_, std::strerror(errno));
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(sv[0]);
    ::close(sv[1]);
    throw Error(fmt::format("reward_command '{}': fork failed: {}", command_, std::strerror(errno)));
  }
  if (pid == 0) {  // child: stdin and stdout are its end of the pair
    ::dup2(sv[1], 0);
    ::dup2(sv[1], 1);
    ::execl("/bin/sh", "sh", "-c", command_.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(sv[1]);
  fd_ = sv[0];
  pid_ = pid;
}

RewardProcess::~RewardProcess() {
  if (fd_ >= 0) ::close(fd_);  // EOF on the child's stdin: it should exit
  if (pid_ > 0) {
    int status = 0;
    ::waitpid(pid_, &status, 0);
  }
}

std::string RewardProcess::read_line() {
  for (;;) {
    const size_t nl = pending_.find('\n');
    if (nl != std::string::npos) {
      std::string line = pending_.substr(0, nl);
      pending_.erase(0, nl + 1);
      return line;
    }
    PRIMUS_CHECK(pending_.size() <= kMaxLine, "reward_command '{}': an answer line is longer than 1 MiB", command_);
    char buf[65536];
    const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    PRIMUS_CHECK(n > 0, "reward_command '{}' closed its stdout (exited?) before answering; it must print one line per "
                 "request line (docs/RL.md)",
                 command_);
    pending_.append(buf, static_cast<size_t>(n));
  }
}

double RewardProcess::score(const nlohmann::json& request) {
  const std::string line = request.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  for (size_t sent = 0; sent < line.size();) {
    const ssize_t n = ::send(fd_, line.data() + sent, line.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // it stopped reading (exited?): what it wrote before, if anything, says why
    sent += static_cast<size_t>(n);
  }
  return parse_reward_answer(read_line(), command_);
}

double parse_reward_answer(const std::string& answer, const std::string& command) {
  nlohmann::json j = nlohmann::json::parse(answer, nullptr, /*allow_exceptions=*/false);
  PRIMUS_CHECK(!j.is_discarded(), "reward_command '{}' answered '{}', which is not JSON; expected a number or "
               "{{\"reward\": number}}",
               command, answer.substr(0, 200));
  if (j.is_object() && j.contains("reward")) j = j["reward"];
  PRIMUS_CHECK(j.is_number(), "reward_command '{}' answered '{}'; expected a number or {{\"reward\": number}}",
               command, answer.substr(0, 200));
  const double r = j.get<double>();
  PRIMUS_CHECK(std::isfinite(r), "reward_command '{}' answered a non-finite reward '{}'", command,
               answer.substr(0, 200));
  return r;
}

}  // namespace primus::rl
