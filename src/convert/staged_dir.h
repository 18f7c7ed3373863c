// An output directory that appears complete or not at all.
//
//   StagedDir out("/models/llama-hf", force);   // refuses a non-empty target without force
//   write files into out.path() ...             // <parent>/.llama-hf.tmp-<pid>
//   out.commit();                               // rename into place (fsynced)
// Destroyed without commit() (an error was thrown), the staging directory is deleted, so
// a failed conversion leaves nothing behind; a killed one leaves only the hidden
// .<name>.tmp-<pid>, which the next StagedDir for the same target removes. With force, an
// existing target is renamed aside and deleted only after the new one is in place.
#pragma once

#include <string>

namespace primus::convert {

class StagedDir {
 public:
  // `what` names the option for messages (e.g. "--output").
  StagedDir(const std::string& target, bool force, const std::string& what = "--output");
  ~StagedDir();
  StagedDir(const StagedDir&) = delete;
  StagedDir& operator=(const StagedDir&) = delete;

  const std::string& path() const { return staging_; }   // write here
  const std::string& target() const { return target_; }  // final location
  void commit();

 private:
  std::string target_, staging_;
  bool committed_ = false;
};

// Throws when `output` is `input` or contains it (a --force there would delete the
// source). Both may not exist yet.
void check_output_apart_from_input(const std::string& output, const std::string& input);

}  // namespace primus::convert
