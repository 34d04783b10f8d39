// error.hpp: the one exception type of peftkit.
//
// Every failure a user can cause (a bad recipe key, a malformed file, a plugin that does not fit)
// is a peftkit::Error whose message names the place (file:line, key, plugin file), what was
// expected and what was found. Plugins throw it too; it is defined in the core library, so it can
// be caught by type across plugin boundaries.
//
//   throw peftkit::Error("data.npy: expected a .npy magic string, found 'PK\\x03\\x04'");
#pragma once

#include <stdexcept>
#include <string>

namespace peftkit {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message);
  ~Error() override;  // out of line: the key function lives in libpeftkit-core.so
};

}  // namespace peftkit
