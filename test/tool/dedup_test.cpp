// hl7 listen --dedup's window of recent replies.
#include "dedup.hpp"

#include <hl7/model/ack.hpp>

#include <doctest/doctest.h>

using hl7::tool::dedup_window;
using state = dedup_window::found::state;

namespace {

hl7::message msg(const std::string& app, const std::string& id)
{
    return hl7::message::parse("MSH|^~\\&|" + app + "|FAC|R|F|2024||ADT^A01|" + id + "|P|2.5.1\rPID|1\r").value();
}

} // namespace

TEST_CASE("a message's key is its sending application, facility and control id; none without MSH-10")
{
    CHECK(dedup_window::key_of(msg("A", "1")) != dedup_window::key_of(msg("B", "1")));
    CHECK(dedup_window::key_of(msg("A", "1")) == dedup_window::key_of(msg("A", "1")));
    CHECK_FALSE(dedup_window::key_of(msg("A", "")).has_value());
}

TEST_CASE("a message answered before is found with its reply; one in hand is in progress; a new one is fresh")
{
    dedup_window w;
    const auto key = *dedup_window::key_of(msg("A", "1"));
    CHECK(w.claim(key).what == state::fresh);
    CHECK(w.claim(key).what == state::in_progress);
    const auto ack = hl7::make_ack(msg("A", "1"), hl7::verdict::accept).value();
    w.finish(key, ack);
    const auto found = w.claim(key);
    CHECK(found.what == state::answered);
    REQUIRE(found.reply.has_value());
    CHECK(found.reply->str() == ack.str());
}

TEST_CASE("a message that could not be handled is forgotten, so that its resend is handled anew")
{
    dedup_window w;
    const auto key = *dedup_window::key_of(msg("A", "2"));
    CHECK(w.claim(key).what == state::fresh);
    w.abandon(key);
    CHECK(w.claim(key).what == state::fresh);
}

TEST_CASE("the window keeps the last `capacity` answers: the oldest goes first")
{
    dedup_window w(3);
    for (int i = 0; i < 5; ++i) {
        const auto key = *dedup_window::key_of(msg("A", std::to_string(i)));
        REQUIRE(w.claim(key).what == state::fresh);
        w.finish(key, std::nullopt);
    }
    CHECK(w.size() == 3);
    CHECK(w.claim(*dedup_window::key_of(msg("A", "4"))).what == state::answered);
    CHECK(w.claim(*dedup_window::key_of(msg("A", "2"))).what == state::answered);
    CHECK(w.claim(*dedup_window::key_of(msg("A", "1"))).what == state::fresh);
}
