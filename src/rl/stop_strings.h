// Stop strings of GRPO's rollouts (grpo_options.h stop_strings): where a sampled completion
// ends when one of the texts appears in it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/tokenizer/tokenizer.h"

namespace primus::rl {

// A completion cut at its first stop string: how many of its tokens stay and its text up to
// the stop string; tokens is npos when no stop string occurs.
struct StopCut {
  size_t tokens = std::string::npos;
  std::string text;
};

// `tokens`: the fewest leading tokens whose text, decode(ids[0, k)), holds a stop string (the
// token that completes it is kept). `text`: decode(ids) up to the stop string that starts
// first in it (so with several stop strings the earliest one wins, wherever it ends).
//
// Linear in the completion: the prefix texts are built token by token from decodes of a
// short window of the latest tokens (a token's text can depend on its neighbours: a leading
// space dropped at the start, a UTF-8 character split over byte tokens), and each new piece
// is searched only where a stop string could newly end (its last max-stop-length - 1 bytes
// before the piece, and the piece). The answer is then confirmed against decode() of the
// whole prefixes k - 1 and k; a tokenizer whose text reaches further back than the window
// would fail that check and gets the exact token-by-token search of whole prefixes.
StopCut cut_at_stop_string(const data::Tokenizer& tok, const std::vector<int32_t>& ids,
                           const std::vector<std::string>& stops);

}  // namespace primus::rl
