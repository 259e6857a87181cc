// Helpers for doctest suites that work with messages.
#pragma once

#include <hl7/model/message.hpp>

#include "support/util.hpp"

#include <doctest/doctest.h>

#include <string>
#include <string_view>

namespace hl7::test {

/// The message in `bytes`, which must parse.
inline message parsed(std::string_view bytes)
{
    auto m = message::parse(bytes);
    REQUIRE_MESSAGE(m.has_value(), (m.has_error() ? m.error().message() : std::string()));
    return std::move(m).value();
}

/// A sample message (adt_a01.hl7 or oru_r01.hl7) with a fresh control id.
inline message fresh(const std::string& sample = "adt_a01.hl7")
{
    message m = parsed(read_sample(sample));
    REQUIRE(m.set("MSH.10", make_control_id()));
    return m;
}

} // namespace hl7::test
