// Answering what does not parse: the header of a frame whose MSH-1/MSH-2 are unusable, rebuilt
// so that the frame's sender can still be told (with an AE) that its message was refused.
#pragma once

#include <hl7/model/message.hpp>

#include <optional>
#include <string_view>

namespace hl7::detail {

/// A frame that starts with MSH yet does not parse has unusable encoding characters (short of
/// being 4 GiB long). This gives its MSH segment with the frame's field separator, the default
/// encoding characters in place of its MSH-2, and its other fields as they are on the wire, as
/// a message that make_ack can answer; nullopt when even that does not parse (the field
/// separator itself is unusable) or has no MSH-10 to answer.
std::optional<message> recover_header(std::string_view frame);

} // namespace hl7::detail
