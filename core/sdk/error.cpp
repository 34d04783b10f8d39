#include "peftkit/error.hpp"

namespace peftkit {

Error::Error(const std::string& message) : std::runtime_error(message) {}
Error::~Error() = default;

}  // namespace peftkit
