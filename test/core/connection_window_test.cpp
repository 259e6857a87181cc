// The core with a window (max_in_flight > 1): several messages written before their ACKs,
// each ACK matched to its own message in whatever order it comes, against the faults of the
// single-message tests.
#include "core/connection_core.hpp"

#include "support/core_harness.hpp"

#include <boost/asio/error.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <numeric>
#include <string>
#include <vector>

using hl7::errc;
using hl7::connection_state;
using hl7::close_mode;
using namespace hl7::test;
namespace asio_error = boost::asio::error;

namespace {

// Connected, with `sends` messages sent and as many written as the window lets through (each
// write reported done at once).
harness& filled(harness& h, std::uint64_t sends)
{
    up(h);
    for (std::uint64_t id = 1; id <= sends; ++id)
        h.send(id);
    h.drain();
    while (h.core.writing()) {
        h.wrote();
        h.drain();
    }
    return h;
}

} // namespace

TEST_CASE("with a window of three, three messages are written one at a time before any ACK")
{
    harness h(harness::window(3, false));
    up(h);
    for (std::uint64_t id = 1; id <= 5; ++id)
        h.send(id);
    CHECK(h.drain() == std::vector<action>{action::write(1, 1)});
    h.wrote();
    CHECK(h.drain() == std::vector<action>{action::write(1, 2)});
    h.wrote();
    CHECK(h.drain() == std::vector<action>{action::write(1, 3)});
    h.wrote();
    CHECK(h.drain().empty()); // the window is full
    CHECK(h.core.in_flight() == 3);
    h.ack(2);
    CHECK(h.drain() == std::vector<action>{action::complete(2, expected_ack("C2")), action::write(1, 4)});
    h.ack(1);
    CHECK(h.drain() == std::vector<action>{action::complete(1, expected_ack("C1"))}); // 4's write is still going on
    h.wrote();
    CHECK(h.drain() == std::vector<action>{action::write(1, 5)});
}

TEST_CASE("in a window, ACKs in any order complete their own messages")
{
    for (std::uint64_t n = 2; n <= 4; ++n) {
        std::vector<std::uint64_t> order(n);
        std::iota(order.begin(), order.end(), 1);
        do {
            CAPTURE(n);
            harness h(harness::window(n));
            filled(h, n);
            REQUIRE(h.core.in_flight() == n);
            for (std::uint64_t id : order) {
                h.now += 1ms;
                h.ack(id, id % 2 ? "AA" : "AE");
                h.drain();
                CHECK(h.ack_of(id).control_id() == harness::cid(id));
                CHECK(h.ack_of(id).code() == (id % 2 ? hl7::ack_code::AA : hl7::ack_code::AE));
            }
            CHECK(h.core.state() == connection_state::connected);
            CHECK(h.counters.acknowledged + h.counters.rejected == n);
            h.check_counted();
        } while (std::next_permutation(order.begin(), order.end()));
    }
}

TEST_CASE("in a window, each ACK carries its own message's round trip")
{
    harness h(harness::window(2));
    up(h);
    h.send(1);
    h.drain();
    h.wrote();
    h.now += 5ms;
    h.send(2);
    h.drain();
    h.wrote();
    h.now += 5ms;
    h.ack(2);
    h.ack(1);
    h.drain();
    CHECK(h.ack_of(1).round_trip() == 10ms);
    CHECK(h.ack_of(2).round_trip() == 5ms);
}

TEST_CASE("in a window, an unknown ACK fails the oldest as ack_mismatch and the others as connection_lost")
{
    harness h(harness::window(3));
    filled(h, 5);
    h.core.received(h.link, ack_frame("NOT-OURS"), h.now);
    h.drain();
    CHECK(h.error_of(1) == errc::ack_mismatch);
    CHECK(h.error_of(2) == errc::connection_lost);
    CHECK(h.error_of(3) == errc::connection_lost);
    for (std::uint64_t id = 1; id <= 3; ++id)
        CHECK(hl7::in_doubt(h.error_of(id)));
    CHECK(h.times(4) == 0); // queued: they go after reconnecting
    CHECK(h.core.state() == connection_state::backing_off);
    h.fire();
    h.connect_ok();
    h.drain();
    CHECK(h.written == std::vector<std::uint64_t>{1, 2, 3, 4});
}

TEST_CASE("in a window, a timeout fails the timed-out messages with ack_timeout and the others with connection_lost")
{
    harness h(harness::window(3));
    up(h);
    h.send(1);
    h.send(2);
    h.drain();
    h.wrote(); // 1 written at t, 2 starts at t
    h.drain();
    h.now += 1s;
    h.wrote();
    h.send(3); // 3 starts at t + 1s
    h.drain();
    h.wrote();
    h.drain();
    h.advance(h.options.ack_timeout - 1s); // 1 and 2 are due, 3 is not
    h.drain();
    CHECK(h.error_of(1) == errc::ack_timeout);
    CHECK(h.error_of(2) == errc::ack_timeout);
    CHECK(h.error_of(3) == errc::connection_lost);
    CHECK(h.counters.timed_out == 2);
    CHECK(h.count_events(hl7::connection_event::kind::timed_out) == 2);
    h.check_counted();
}

TEST_CASE("in a window, a lost link fails every message in flight, and the queued ones go out after reconnecting")
{
    harness h(harness::window(3));
    filled(h, 6);
    const std::string half = ack_frame("C1").substr(0, 20);
    h.core.received(h.link, half, h.now); // the peer closes mid-frame
    h.core.read_failed(h.link, asio_error::eof, h.now);
    h.drain();
    for (std::uint64_t id = 1; id <= 3; ++id)
        CHECK(h.error_of(id) == errc::connection_lost);
    h.fire();
    h.connect_ok();
    h.drain();
    while (h.core.writing()) {
        h.wrote();
        h.drain();
    }
    for (std::uint64_t id = 4; id <= 6; ++id)
        h.ack(id);
    h.drain();
    for (std::uint64_t id = 4; id <= 6; ++id)
        CHECK(h.succeeded(id));
    CHECK(h.written == std::vector<std::uint64_t>{1, 2, 3, 4, 5, 6});
}

TEST_CASE("in a window, late and repeated ACKs are discarded and never answer another message")
{
    harness h(harness::window(2));
    filled(h, 4);
    h.ack(1);
    h.ack(1); // repeated
    h.drain();
    CHECK(h.succeeded(1));
    while (h.core.writing()) {
        h.wrote();
        h.drain();
    }
    h.ack(2);
    h.ack(1); // late
    h.drain();
    CHECK(h.counters.discarded == 2);
    CHECK(h.times(3) == 0);
    CHECK(h.core.state() == connection_state::connected);
    while (h.core.writing()) {
        h.wrote();
        h.drain();
    }
    h.ack(4);
    h.ack(3);
    h.drain();
    h.check_all_completed(1, 4);
    for (std::uint64_t id = 1; id <= 4; ++id)
        CHECK(h.ack_of(id).control_id() == harness::cid(id));
}

TEST_CASE("in a window, AE and AR complete their own messages and keep the link")
{
    harness h(harness::window(3));
    filled(h, 3);
    h.ack(3, "AR");
    h.ack(1, "AE");
    h.ack(2, "AA");
    h.drain();
    CHECK(h.ack_of(1).code() == hl7::ack_code::AE);
    CHECK(h.ack_of(2).code() == hl7::ack_code::AA);
    CHECK(h.ack_of(3).code() == hl7::ack_code::AR);
    CHECK(h.counters.rejected == 2);
    CHECK(h.core.state() == connection_state::connected);
}

TEST_CASE("in a window, a reply that is not an ACK fails the oldest as invalid_ack, and an oversized one as frame_too_large")
{
    {
        harness h(harness::window(3));
        filled(h, 3);
        h.ack(2);
        h.core.received(h.link, hl7::mllp::encode("garbage"), h.now);
        h.drain();
        CHECK(h.succeeded(2));
        CHECK(h.error_of(1) == errc::invalid_ack);
        CHECK(h.error_of(3) == errc::connection_lost);
    }
    {
        auto o = harness::window(3);
        o.max_frame = 64;
        harness h(o);
        filled(h, 3);
        h.core.received(h.link, "\x0b" + std::string(100, 'x'), h.now);
        h.drain();
        CHECK(h.error_of(1) == errc::frame_too_large);
        CHECK(h.error_of(2) == errc::connection_lost);
        CHECK(h.error_of(3) == errc::connection_lost);
    }
}

TEST_CASE("in a window, ACKs one byte at a time and several in one read complete their messages")
{
    harness h(harness::window(4));
    filled(h, 4);
    const std::string both = ack_frame("C2") + ack_frame("C1");
    h.core.received(h.link, both, h.now);
    for (char c : ack_frame("C4") + ack_frame("C3"))
        h.core.received(h.link, std::string_view(&c, 1), h.now);
    h.drain();
    h.check_all_completed(1, 4);
    for (std::uint64_t id = 1; id <= 4; ++id)
        CHECK(h.ack_of(id).control_id() == harness::cid(id));
}

TEST_CASE("a message whose MSH-10 is already in flight waits until that one has finished")
{
    harness h(harness::window(3, false));
    up(h);
    h.core.send(1, "SAME", h.now);
    h.core.send(2, "SAME", h.now);
    h.send(3);
    CHECK(h.drain() == std::vector<action>{action::write(1, 1)});
    h.wrote();
    CHECK(h.drain().empty()); // 2 waits, and 3 behind it: order is kept
    h.core.received(h.link, ack_frame("SAME"), h.now);
    CHECK(h.drain() == std::vector<action>{action::complete(1, expected_ack("SAME")), action::write(1, 2)});
    h.wrote();
    CHECK(h.drain() == std::vector<action>{action::write(1, 3)});
}

TEST_CASE("in a window, partial cancellation removes only queued sends; terminal cancellation abandons one in flight")
{
    harness h(harness::window(2));
    filled(h, 4);
    h.core.cancel(1, false, h.now); // written: partial cancellation cannot undo it
    h.core.cancel(3, false, h.now); // queued: removed unsent
    h.drain();
    CHECK(h.times(1) == 0);
    CHECK(h.error_of(3) == asio_error::operation_aborted);
    h.core.cancel(2, true, h.now); // in flight: abandoned, its place kept until its ACK
    h.drain();
    CHECK(h.error_of(2) == asio_error::operation_aborted);
    CHECK(h.core.in_flight() == 2);
    h.ack(2);
    h.drain(); // its place goes to 4
    while (h.core.writing()) {
        h.wrote();
        h.drain();
    }
    CHECK(h.written == std::vector<std::uint64_t>{1, 2, 4});
    h.ack(4);
    h.ack(1);
    h.drain();
    h.check_all_completed(1, 4);
    CHECK(h.counters.failed == 2);
    h.check_counted();
}

TEST_CASE("in a window, an ACK for the message still being written is held until its write completes")
{
    harness h(harness::window(3));
    up(h);
    h.send(1);
    h.send(2);
    h.drain();
    h.wrote();
    h.drain();
    h.ack(2); // 2's write is still going on
    h.ack(1);
    h.drain();
    CHECK(h.succeeded(1));
    CHECK(h.times(2) == 0);
    h.wrote();
    h.drain();
    CHECK(h.succeeded(2));
}

TEST_CASE("in a window, a graceful close waits for every message in flight, an immediate one for none")
{
    {
        harness h(harness::window(3));
        filled(h, 4);
        h.core.close(close_mode::graceful, h.now);
        h.drain();
        CHECK(h.error_of(4) == errc::closed);
        h.ack(2);
        h.ack(1);
        h.drain();
        CHECK(h.core.state() == connection_state::closing);
        h.ack(3);
        h.drain();
        CHECK(h.core.state() == connection_state::closed);
        h.check_all_completed(1, 4);
    }
    {
        harness h(harness::window(3));
        filled(h, 4);
        h.core.close(close_mode::immediate, h.now);
        h.drain();
        for (std::uint64_t id = 1; id <= 3; ++id)
            CHECK(h.error_of(id) == errc::connection_lost);
        CHECK(h.error_of(4) == errc::closed);
        CHECK(h.core.state() == connection_state::closed);
    }
}
