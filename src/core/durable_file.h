// Durable file-system steps for checkpoints: every write is fsynced and every publish is a
// rename, so a crash (kill -9, power loss) leaves either the old state or the new one.
#pragma once

#include <string>
#include <string_view>

namespace primus::durable {

// fsync a file or a directory by path (directories: persists their entries, i.e. renames).
void fsync_path(const std::string& path);
// Creates/truncates `path`, writes `bytes`, fsyncs, closes. Not atomic by itself.
void write_file(const std::string& path, std::string_view bytes);
// Atomic replace: writes `<path>.tmp-<pid>`, fsyncs it, renames over `path`, fsyncs the
// parent directory. Readers see the old content or the new, never a mix.
void write_file_atomic(const std::string& path, std::string_view bytes);
// rename(2) that throws naming both paths.
void rename_path(const std::string& from, const std::string& to);
// Atomically swaps two existing paths (renameat2 RENAME_EXCHANGE). Returns false when the
// file system does not support it (EINVAL/ENOSYS/ENOTSUP); throws on other errors.
bool exchange_paths(const std::string& a, const std::string& b);
std::string read_file(const std::string& path);  // throws naming the path

}  // namespace primus::durable
