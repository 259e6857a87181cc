// The connection's I/O-free core, stepped with a made-up clock: no sockets, no sleeps. Where a
// test's name promises an order, it compares the whole sequence of actions.
#include "core/connection_core.hpp"

#include "support/core_harness.hpp"

#include <boost/asio/error.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <string>
#include <vector>

using hl7::errc;
using hl7::connection_state;
using hl7::close_mode;
using namespace hl7::test;
namespace asio_error = boost::asio::error;

namespace {

action note(event e)
{
    return action::notify(std::move(e));
}

} // namespace

TEST_CASE("a connection connects at once and writes a queued message when connected")
{
    harness h;
    const auto t = h.now;
    h.core.start(h.now);
    CHECK(h.drain() == std::vector<action>{note(event::connecting(1)), action::connect(1, 1), action::arm_timer(t + 10s)});
    CHECK(h.core.state() == connection_state::connecting);
    h.send(1);
    CHECK(h.drain().empty());
    CHECK(h.counters.queued == 1);
    h.connect_ok();
    CHECK(h.drain() == std::vector<action>{note(event::connected({})), action::write(1, 1)});
    CHECK(h.core.state() == connection_state::connected);
    CHECK(h.counters.queued == 0);
    h.wrote();
    CHECK(h.drain() == std::vector<action>{note(event::sent("C1"))});
    h.ack(1);
    CHECK(h.drain() == std::vector<action>{note(event::acknowledged("C1", hl7::ack_code::AA, {})),
                                           action::complete(1, expected_ack("C1"))});
    h.check_counted();
}

TEST_CASE("a lazy connection stays idle until its first send")
{
    auto o = harness::defaults();
    o.lazy = true;
    harness h(o);
    CHECK(h.core.state() == connection_state::idle);
    CHECK(h.drain().empty());
    h.send(1);
    const auto t = h.now;
    CHECK(h.drain() == std::vector<action>{note(event::connecting(1)), action::connect(1, 1), action::arm_timer(t + 10s)});
    CHECK(h.core.state() == connection_state::connecting);
    CHECK(h.times(1) == 0);
}

TEST_CASE("the matching ACK completes the send, whatever its code")
{
    harness h;
    up(h);
    const char* codes[] = {"AA", "AE", "AR", "CA", "CE", "CR"};
    for (std::uint64_t id = 1; id <= 6; ++id) {
        h.send(id);
        h.wrote();
        h.now += 3ms;
        h.ack(id, codes[id - 1]);
        h.drain();
        const hl7::ack& ack = h.ack_of(id);
        CHECK(to_string(ack.code()) == codes[id - 1]);
        CHECK(ack.control_id() == harness::cid(id));
        CHECK(ack.round_trip() == 3ms);
    }
    CHECK(h.counters.sent == 6);
    CHECK(h.counters.acknowledged == 2);
    CHECK(h.counters.rejected == 4);
    CHECK(h.counters.failed == 0);
    h.check_counted();
    CHECK(h.core.state() == connection_state::connected);
    const auto& ack = *std::find_if(h.events.begin(), h.events.end(),
                                    [](const auto& e) { return e.what == hl7::connection_event::kind::acknowledged; });
    CHECK(ack == event::acknowledged("C1", hl7::ack_code::AA, 3ms));
}

TEST_CASE("messages are written one at a time in the order they were sent")
{
    harness h(harness::quiet());
    up(h);
    for (std::uint64_t id = 1; id <= 5; ++id)
        h.send(id);
    CHECK(h.drain() == std::vector<action>{action::write(1, 1)});
    CHECK(h.counters.queued == 4);
    for (std::uint64_t id = 1; id <= 5; ++id) {
        h.wrote();
        CHECK(h.drain().empty());
        h.ack(id);
        std::vector<action> expected{action::complete(id, expected_ack(harness::cid(id)))};
        if (id < 5)
            expected.push_back(action::write(1, id + 1));
        CHECK(h.drain() == expected);
    }
    h.check_all_completed(1, 5);
    CHECK(h.counters.queued == 0);
}

TEST_CASE("an ACK read before its write completed is held until the write completes")
{
    harness h;
    up(h);
    h.send(1);
    h.send(2);
    h.drain();
    h.ack(1); // read before the write's completion was reported
    CHECK(h.drain().empty());
    CHECK(h.times(1) == 0);
    CHECK(h.written == std::vector<std::uint64_t>{1});
    h.now += 1ms;
    h.wrote();
    CHECK(h.drain() == std::vector<action>{note(event::sent("C1")),
                                           note(event::acknowledged("C1", hl7::ack_code::AA, {})),
                                           action::complete(1, expected_ack("C1")), action::write(1, 2)});
    CHECK(h.counters.acknowledged == 1);
}

TEST_CASE("an ACK held for a write that then fails completes the send as connection_lost")
{
    harness h;
    up(h);
    const auto t = h.now;
    h.send(1);
    h.ack(1);
    h.drain();
    h.core.written(h.link, asio_error::broken_pipe, h.now);
    CHECK(h.drain() == std::vector<action>{action::complete(1, errc::connection_lost), action::close_socket(1),
                                           note(event::disconnected(asio_error::broken_pipe)),
                                           note(event::reconnect_scheduled(1, 200ms, asio_error::broken_pipe)),
                                           action::arm_timer(t + 200ms)});
    CHECK(h.counters.acknowledged == 0);
    CHECK(h.counters.sent == 0);
    h.check_counted();
}

TEST_CASE("an ACK held for a write that never completes times out")
{
    harness h;
    up(h);
    h.send(1);
    h.ack(1);
    h.drain();
    h.advance(h.options.ack_timeout);
    h.drain();
    CHECK(h.error_of(1) == errc::ack_timeout);
    CHECK(h.counters.acknowledged == 0);
    CHECK(h.counters.timed_out == 1);
    h.check_counted();
}

TEST_CASE("a repeated ACK for a message whose write is still going on is discarded")
{
    harness h;
    up(h);
    h.send(1);
    h.core.received(h.link, ack_frame("C1") + ack_frame("C1", "AE"), h.now);
    h.drain();
    CHECK(h.counters.discarded == 1);
    h.wrote();
    h.drain();
    CHECK(h.ack_of(1).code() == hl7::ack_code::AA);
}

TEST_CASE("an ACK with the wrong MSA-2 fails the message and resets the link")
{
    harness h;
    up(h);
    const auto t = h.now;
    h.send(1);
    h.wrote();
    h.drain();
    h.core.received(h.link, ack_frame("SOMEONE-ELSE"), h.now);
    CHECK(h.drain() == std::vector<action>{action::complete(1, errc::ack_mismatch), action::close_socket(1),
                                           note(event::disconnected(errc::ack_mismatch)),
                                           note(event::reconnect_scheduled(1, 200ms, errc::ack_mismatch)),
                                           action::arm_timer(t + 200ms)});
    CHECK(h.core.state() == connection_state::backing_off);
    CHECK(h.counters.failed == 1);
    h.fire();
    CHECK(h.link == 3);
    CHECK(h.core.state() == connection_state::connecting);
}

TEST_CASE("replies that are not acknowledgements fail the message as garbled")
{
    const std::string replies[] = {
        hl7::mllp::encode("not hl7 at all"),
        hl7::mllp::encode("MSH|^~\\&|A\rPID|1\r"),
        hl7::mllp::encode("MSH|^~\\&|A\rMSA|AA|\r"),
        ack_frame("C1", "XX"),
        ack_frame("C1", ""),
    };
    for (const std::string& reply : replies) {
        harness h;
        up(h);
        h.send(1);
        h.wrote();
        h.core.received(h.link, reply, h.now);
        h.drain();
        CHECK(h.error_of(1) == errc::invalid_ack);
        CHECK(h.core.state() == connection_state::backing_off);
    }
}

TEST_CASE("no ACK within the ACK timeout fails the message and resets the link")
{
    harness h;
    up(h);
    h.send(1);
    h.send(2);
    h.wrote();
    h.drain();
    const auto old_link = h.link;
    h.advance(h.options.ack_timeout - 1ms);
    h.drain();
    CHECK(h.times(1) == 0);
    h.advance(1ms);
    CHECK(h.drain() == std::vector<action>{note(event::timed_out("C1")), action::complete(1, errc::ack_timeout),
                                           action::close_socket(old_link),
                                           note(event::disconnected(errc::ack_timeout)),
                                           note(event::reconnect_scheduled(1, 200ms, errc::ack_timeout)),
                                           action::arm_timer(h.now + 200ms)});
    CHECK(h.counters.timed_out == 1);
    CHECK(h.counters.failed == 0);
    // The late ACK on the old link is ignored.
    h.core.received(old_link, ack_frame("C1"), h.now);
    CHECK(h.drain().empty());
    CHECK(h.counters.acknowledged == 0);
    // Reconnect after the initial delay; message 2 goes out on the new link.
    h.fire();
    h.connect_ok();
    h.drain();
    CHECK(h.written == std::vector<std::uint64_t>{1, 2});
    // A late ACK of message 1 arriving now is discarded and does not answer message 2.
    h.wrote();
    h.ack(1);
    h.drain();
    CHECK(h.times(2) == 0);
    CHECK(h.counters.discarded == 1);
    h.ack(2);
    h.drain();
    CHECK(h.succeeded(2));
    CHECK(h.counters.reconnects == 1);
    h.check_counted();
}

TEST_CASE("failed connection attempts back off exponentially up to the maximum, then give up")
{
    auto o = harness::defaults();
    o.reconnect = {.max_attempts = 6, .initial = 100ms, .max = 1s, .factor = 3.0, .jitter = 0};
    harness h(o);
    h.core.start(h.now);
    h.drain();
    h.send(1);
    h.drain();
    std::vector<core_clock::duration> delays;
    for (int attempt = 1; attempt <= 6; ++attempt) {
        REQUIRE(h.core.state() == connection_state::connecting);
        const auto failed_at = h.now;
        h.core.connect_failed(h.link, asio_error::connection_refused, h.now);
        h.drain();
        if (attempt < 6) {
            REQUIRE(h.core.state() == connection_state::backing_off);
            delays.push_back(h.timer - failed_at);
            h.fire();
        }
    }
    CHECK(delays == std::vector<core_clock::duration>{100ms, 300ms, 900ms, 1s, 1s});
    std::vector<std::uint32_t> scheduled;
    for (const auto& e : h.events)
        if (e.what == hl7::connection_event::kind::reconnect_scheduled)
            scheduled.push_back(e.attempt);
    CHECK(scheduled == std::vector<std::uint32_t>{2, 3, 4, 5, 6});
    CHECK(h.core.state() == connection_state::failed);
    CHECK(h.error_of(1) == errc::not_connected);
    CHECK(h.count_events(hl7::connection_event::kind::gave_up) == 1);
    CHECK(h.events.back() == event::gave_up(6, asio_error::connection_refused));
    CHECK(h.timer == core_clock::time_point::max());
    // Every later send fails at once until the application starts the connection again.
    h.send(2);
    h.drain();
    CHECK(h.error_of(2) == errc::not_connected);
    h.core.start(h.now);
    h.drain();
    CHECK(h.core.state() == connection_state::connecting);
    CHECK(h.events.back() == event::connecting(1));
    h.connect_ok();
    h.send(3);
    h.drain();
    CHECK(h.written == std::vector<std::uint64_t>{3});
}

TEST_CASE("the diagnostics keep why the connection gave up, after how many attempts and when")
{
    auto o = harness::defaults();
    o.reconnect = {.max_attempts = 3, .initial = 100ms, .max = 1s, .factor = 2.0, .jitter = 0};
    harness h(o);
    CHECK_FALSE(h.status.diagnostics().last_error);
    h.core.start(h.now);
    h.drain();
    h.core.connect_failed(h.link, asio_error::connection_refused, h.now);
    h.drain();
    CHECK(h.status.diagnostics().last_error == asio_error::connection_refused);
    CHECK(h.status.diagnostics().failed_attempts == 1);
    h.fire();
    h.advance(h.options.connect_timeout);
    h.drain();
    CHECK(h.status.diagnostics().last_error == errc::connect_timeout);
    CHECK(h.status.diagnostics().failed_attempts == 2);
    h.fire();
    const auto gave_up_at = h.now;
    h.core.connect_failed(h.link, errc::tls_untrusted_certificate, h.now);
    h.drain();
    REQUIRE(h.core.state() == connection_state::failed);
    const auto d = h.status.diagnostics();
    CHECK(d.last_error == errc::tls_untrusted_certificate);
    CHECK(d.failed_attempts == 3);
    CHECK(d.at == gave_up_at);
    // A lost link is recorded too, with no failed attempt.
    h.core.start(h.now);
    h.drain();
    h.connect_ok();
    h.drain();
    CHECK(h.status.remote().has_value());
    h.core.read_failed(h.link, asio_error::connection_reset, h.now);
    h.drain();
    CHECK(h.status.diagnostics().last_error == asio_error::connection_reset);
    CHECK(h.status.diagnostics().failed_attempts == 0);
    CHECK_FALSE(h.status.remote().has_value());
}

TEST_CASE("a successful connection resets the count of failed attempts")
{
    auto o = harness::defaults();
    o.reconnect.max_attempts = 3;
    harness h(o);
    h.core.start(h.now);
    h.drain();
    for (int round = 0; round < 5; ++round) {
        h.core.connect_failed(h.link, asio_error::connection_refused, h.now);
        h.drain();
        h.fire();
        h.core.connect_failed(h.link, asio_error::connection_refused, h.now);
        h.drain();
        h.fire();
        h.connect_ok();
        h.drain();
        REQUIRE(h.core.state() == connection_state::connected);
        h.core.read_failed(h.link, asio_error::connection_reset, h.now);
        h.drain();
        h.fire();
    }
    CHECK(h.core.state() == connection_state::connecting);
    CHECK(h.counters.reconnects == 4);
}

TEST_CASE("a certificate refused after the handshake fails the message with that reason and counts as a failed attempt")
{
    // TLS 1.3: the server's verdict on the client certificate arrives after the handshake,
    // as an alert read on the open link.
    auto o = harness::defaults();
    o.reconnect.max_attempts = 3;
    harness h(o);
    h.core.start(h.now);
    h.drain();
    h.send(1);
    for (int attempt = 1; attempt <= 3; ++attempt) {
        h.connect_ok();
        h.drain();
        REQUIRE(h.core.state() == connection_state::connected);
        h.core.read_failed(h.link, errc::tls_no_client_certificate, h.now);
        h.drain();
        if (attempt < 3) {
            REQUIRE(h.core.state() == connection_state::backing_off);
            h.fire();
        }
    }
    CHECK(h.error_of(1) == errc::tls_no_client_certificate);
    CHECK(h.core.state() == connection_state::failed);
    CHECK(h.count_events(hl7::connection_event::kind::gave_up) == 1);
}

TEST_CASE("a link dropped for another reason after connecting does not count as a failed attempt")
{
    auto o = harness::defaults();
    o.reconnect.max_attempts = 2;
    harness h(o);
    up(h);
    for (int round = 0; round < 5; ++round) {
        h.core.read_failed(h.link, asio_error::connection_reset, h.now);
        h.drain();
        REQUIRE(h.core.state() == connection_state::backing_off);
        h.fire();
        h.connect_ok();
        h.drain();
    }
    CHECK(h.core.state() == connection_state::connected);
}

TEST_CASE("after the peer closes an idle link cleanly the connection reconnects at once")
{
    harness h;
    up(h);
    h.now += 1s;
    h.core.read_failed(h.link, asio_error::eof, h.now);
    CHECK(h.drain() == std::vector<action>{action::close_socket(1), note(event::disconnected(asio_error::eof)),
                                           note(event::reconnect_scheduled(1, {}, asio_error::eof)),
                                           note(event::connecting(1)), action::connect(3, 1)});
    CHECK(h.core.state() == connection_state::connecting);
}

TEST_CASE("a link the peer closes right after it opened is reconnected after the backoff, not at once")
{
    harness h;
    up(h);
    h.core.read_failed(h.link, asio_error::eof, h.now); // up for less than reconnect.initial
    CHECK(h.drain() == std::vector<action>{action::close_socket(1), note(event::disconnected(asio_error::eof)),
                                           note(event::reconnect_scheduled(1, 200ms, asio_error::eof)),
                                           action::arm_timer(h.now + 200ms)});
    CHECK(h.core.state() == connection_state::backing_off);
}

TEST_CASE("a message written into a link the peer was closing fails as connection_lost, the close named")
{
    harness h;
    up(h);
    h.now += 1s;
    h.send(1);
    h.wrote();
    h.drain();
    h.core.read_failed(h.link, asio_error::eof, h.now);
    h.drain();
    CHECK(h.error_of(1) == errc::connection_lost);
    CHECK(h.count_events(hl7::connection_event::kind::disconnected) == 1);
    CHECK(std::find(h.events.begin(), h.events.end(), event::disconnected(asio_error::eof)) != h.events.end());
    CHECK(h.core.state() == connection_state::backing_off); // not idle: no reconnect at once
}

TEST_CASE("a reconnect policy without a maximum never gives up")
{
    auto o = harness::defaults();
    o.reconnect = {.max_attempts = 0, .initial = 10ms, .max = 50ms, .factor = 2.0, .jitter = 0};
    harness h(o);
    h.core.start(h.now);
    h.drain();
    for (int i = 0; i < 1000; ++i) {
        h.core.connect_failed(h.link, asio_error::connection_refused, h.now);
        h.drain();
        REQUIRE(h.core.state() == connection_state::backing_off);
        CHECK(h.timer - h.now <= 50ms);
        h.fire();
    }
}

TEST_CASE("a connection attempt that outlasts the connect timeout counts as a failure")
{
    harness h;
    h.core.start(h.now);
    h.drain();
    const auto first = h.link;
    h.advance(h.options.connect_timeout);
    CHECK(h.drain() == std::vector<action>{action::close_socket(first),
                                           note(event::reconnect_scheduled(2, 200ms, errc::connect_timeout)),
                                           action::arm_timer(h.now + 200ms)});
    CHECK(h.core.state() == connection_state::backing_off);
    // The aborted attempt's late report is ignored.
    h.core.connect_failed(first, asio_error::operation_aborted, h.now);
    h.core.connected(first, {}, h.now);
    CHECK(h.drain().empty());
    CHECK(h.core.state() == connection_state::backing_off);
}

TEST_CASE("with TLS, the handshake has its own timeout and its expiry is named")
{
    auto o = harness::defaults();
    o.connect_timeout = 10s;
    o.tls = hl7::tls_client_options{.handshake_timeout = 3s};
    harness h(o);
    h.core.start(h.now);
    h.drain();
    h.now += 1s;
    h.core.handshaking(h.link, h.now);
    h.drain();
    CHECK(h.timer == h.now + 3s);
    h.fire();
    CHECK(h.core.state() == connection_state::backing_off);
    REQUIRE(h.count_events(hl7::connection_event::kind::reconnect_scheduled) == 1);
    CHECK(h.events.back().error == errc::tls_handshake_timeout);
    // The next attempt starts with the connect timeout again.
    h.fire();
    CHECK(h.core.state() == connection_state::connecting);
    h.advance(h.options.connect_timeout);
    h.drain();
    CHECK(h.events.back().error == errc::connect_timeout);
}

TEST_CASE("a dropped link fails the message in flight and sends the queued ones, in order, after reconnecting")
{
    harness h;
    up(h);
    for (std::uint64_t id = 1; id <= 4; ++id)
        h.send(id);
    h.wrote();
    h.drain();
    h.core.read_failed(h.link, asio_error::connection_reset, h.now);
    CHECK(h.drain() == std::vector<action>{action::complete(1, errc::connection_lost), action::close_socket(1),
                                           note(event::disconnected(asio_error::connection_reset)),
                                           note(event::reconnect_scheduled(1, 200ms, asio_error::connection_reset)),
                                           action::arm_timer(h.now + 200ms)});
    h.fire();
    h.connect_ok();
    h.drain();
    for (std::uint64_t id = 2; id <= 4; ++id) {
        h.wrote();
        h.ack(id);
        h.drain();
        CHECK(h.succeeded(id));
    }
    CHECK(h.written == std::vector<std::uint64_t>{1, 2, 3, 4});
}

TEST_CASE("reports from a link that was reset are ignored")
{
    harness h;
    up(h);
    h.send(1);
    h.send(2);
    h.drain();
    const auto old_link = h.link;
    h.core.read_failed(h.link, asio_error::connection_reset, h.now);
    h.drain();
    h.fire();
    h.connect_ok();
    h.drain();
    REQUIRE(h.written == std::vector<std::uint64_t>{1, 2});
    h.core.written(old_link, asio_error::operation_aborted, h.now);
    h.core.read_failed(old_link, asio_error::operation_aborted, h.now);
    h.core.received(old_link, ack_frame("C2"), h.now);
    CHECK(h.drain().empty());
    CHECK(h.core.state() == connection_state::connected);
    CHECK(h.times(2) == 0);
    h.wrote();
    h.ack(2);
    h.drain();
    CHECK(h.succeeded(2));
}

TEST_CASE("a failed write fails the message in flight as connection_lost")
{
    harness h;
    up(h);
    h.send(1);
    h.drain();
    h.core.written(h.link, asio_error::broken_pipe, h.now);
    h.drain();
    CHECK(h.error_of(1) == errc::connection_lost);
    CHECK(h.counters.sent == 0);
    CHECK(h.core.state() == connection_state::backing_off);
}

TEST_CASE("a full queue refuses the next message")
{
    auto o = harness::defaults();
    o.queue_limit = 3;
    harness h(o);
    h.core.start(h.now);
    for (std::uint64_t id = 1; id <= 5; ++id)
        h.send(id);
    h.drain();
    CHECK(h.completions.size() == 2);
    CHECK(h.error_of(4) == errc::queue_full);
    CHECK(h.error_of(5) == errc::queue_full);
    CHECK(h.counters.queued == 3);
}

TEST_CASE("messages that wait in the queue longer than the queue timeout fail")
{
    auto o = harness::defaults();
    o.queue_timeout = 5s;
    harness h(o);
    h.core.start(h.now);
    h.send(1);
    h.now += 2s;
    h.send(2);
    h.drain();
    CHECK(h.timer == h.now - 2s + 5s);
    h.fire();
    CHECK(h.error_of(1) == errc::queue_timeout);
    CHECK(h.times(2) == 0);
    CHECK(h.timer == h.now + 2s);
    h.connect_ok();
    h.drain();
    CHECK(h.written == std::vector<std::uint64_t>{2});
}

TEST_CASE("a queued message that times out while another waits behind it leaves that one waiting")
{
    // A peer that takes long per ACK: the message in flight holds the queue up.
    auto o = harness::quiet();
    o.queue_timeout = 5s;
    o.ack_timeout = 30s;
    harness h(o);
    up(h);
    h.send(1); // in flight
    h.wrote();
    h.send(2);
    h.now += 1s;
    h.send(3);
    h.send(4);
    h.drain();
    h.now = h.now - 1s + 5s;
    h.core.timer_fired(h.now);
    CHECK(h.drain() == std::vector<action>{action::complete(2, errc::queue_timeout), action::arm_timer(h.now + 1s)});
    h.fire();
    CHECK(h.error_of(3) == errc::queue_timeout);
    CHECK(h.error_of(4) == errc::queue_timeout);
    CHECK(h.times(1) == 0);
}

TEST_CASE("a zero queue timeout lets messages wait as long as it takes")
{
    auto o = harness::defaults();
    o.queue_timeout = 0ms;
    o.connect_timeout = 24h;
    harness h(o);
    h.core.start(h.now);
    h.send(1);
    h.drain();
    h.advance(23h);
    h.drain();
    CHECK(h.completions.empty());
}

TEST_CASE("timeouts too large to add to the clock never expire and never overflow")
{
    auto o = harness::quiet();
    o.queue_timeout = std::chrono::milliseconds::max();
    o.ack_timeout = std::chrono::milliseconds::max();
    o.connect_timeout = std::chrono::milliseconds::max();
    o.reconnect = {.max_attempts = 0, .initial = std::chrono::milliseconds::max(),
                   .max = std::chrono::milliseconds::max(), .factor = 1e300, .jitter = 1};
    harness h(o);
    h.core.start(h.now);
    h.send(1);
    CHECK(h.drain() == std::vector<action>{action::connect(1, 1)});
    h.core.connect_failed(h.link, asio_error::connection_refused, h.now);
    h.drain();
    CHECK(h.timer > h.now);
    CHECK(h.timer <= h.now + std::chrono::hours(24 * 366));
}

TEST_CASE("close fails queued messages, lets the one in flight finish, then closes")
{
    harness h;
    up(h);
    h.send(1);
    h.send(2);
    h.wrote();
    h.drain();
    h.core.close(close_mode::graceful, h.now);
    CHECK(h.drain() == std::vector<action>{action::complete(2, errc::closed)});
    CHECK(h.times(1) == 0);
    CHECK(h.core.state() == connection_state::closing);
    h.send(3);
    h.drain();
    CHECK(h.error_of(3) == errc::closed);
    h.ack(1);
    CHECK(h.drain() == std::vector<action>{note(event::acknowledged("C1", hl7::ack_code::AA, {})),
                                           action::complete(1, expected_ack("C1")), action::close_socket(1),
                                           note(event::closed()), action::closed(), action::arm_timer(core_clock::time_point::max())});
    CHECK(h.core.state() == connection_state::closed);
    // Idempotent: closing again reports closed again, and nothing reconnects.
    h.core.close(close_mode::graceful, h.now);
    CHECK(h.drain() == std::vector<action>{action::closed()});
    h.core.close(close_mode::immediate, h.now);
    CHECK(h.drain() == std::vector<action>{action::closed()});
    h.core.start(h.now);
    h.core.read_failed(h.link, asio_error::eof, h.now);
    CHECK(h.drain().empty());
}

TEST_CASE("close waits for the ACK timeout of the message in flight")
{
    harness h;
    up(h);
    h.send(1);
    h.wrote();
    h.core.close(close_mode::graceful, h.now);
    h.drain();
    auto acts = h.fire();
    CHECK(h.error_of(1) == errc::ack_timeout);
    CHECK(harness::has(acts, kind::closed));
    CHECK_FALSE(harness::has(acts, kind::connect));
}

TEST_CASE("an immediate close fails queued sends as closed and the one in flight as connection_lost, at once")
{
    harness h;
    up(h);
    h.send(1);
    h.send(2);
    h.send(3);
    h.wrote();
    h.drain();
    h.core.close(close_mode::immediate, h.now);
    CHECK(h.drain() == std::vector<action>{action::complete(2, errc::closed), action::complete(3, errc::closed),
                                           action::complete(1, errc::connection_lost), action::close_socket(1),
                                           note(event::closed()), action::closed(),
                                           action::arm_timer(core_clock::time_point::max())});
    CHECK(h.core.state() == connection_state::closed);
    CHECK(hl7::in_doubt(h.error_of(1)));
    h.check_counted();
}

TEST_CASE("an immediate close cuts short a graceful close in progress")
{
    harness h;
    up(h);
    h.send(1);
    h.wrote();
    h.drain();
    h.core.close(close_mode::graceful, h.now);
    CHECK(h.drain().empty());
    h.core.close(close_mode::immediate, h.now);
    h.drain();
    CHECK(h.error_of(1) == errc::connection_lost);
    CHECK(h.core.state() == connection_state::closed);
}

TEST_CASE("a graceful close does not wait for a message abandoned by terminal cancellation")
{
    harness h;
    up(h);
    h.send(1);
    h.wrote();
    h.core.cancel(1, true, h.now);
    h.drain();
    CHECK(h.error_of(1) == asio_error::operation_aborted);
    h.core.close(close_mode::graceful, h.now);
    auto acts = h.drain();
    CHECK(harness::has(acts, kind::closed));
    CHECK(h.core.state() == connection_state::closed);
    // Abandoned while closing: the close ends with it.
    harness g;
    up(g);
    g.send(1);
    g.wrote();
    g.core.close(close_mode::graceful, g.now);
    g.drain();
    REQUIRE(g.core.state() == connection_state::closing);
    g.core.cancel(1, true, g.now);
    acts = g.drain();
    CHECK(harness::has(acts, kind::closed));
    CHECK(g.error_of(1) == asio_error::operation_aborted);
}

TEST_CASE("close while backing off or connecting closes at once")
{
    harness h;
    h.core.start(h.now);
    h.send(1);
    h.drain();
    h.core.close(close_mode::graceful, h.now);
    CHECK(h.drain() == std::vector<action>{action::complete(1, errc::closed), action::close_socket(1),
                                           note(event::closed()), action::closed(),
                                           action::arm_timer(core_clock::time_point::max())});
    harness b;
    b.core.start(b.now);
    b.drain();
    b.core.connect_failed(b.link, asio_error::connection_refused, b.now);
    b.drain();
    b.core.close(close_mode::graceful, b.now);
    CHECK(harness::has(b.drain(), kind::closed));
    CHECK(b.core.state() == connection_state::closed);
}

TEST_CASE("cancelling a queued message removes it unsent, wherever it is in the queue")
{
    for (std::uint64_t victim : {2, 3, 4}) {
        CAPTURE(victim);
        for (bool terminal : {false, true}) {
            harness h(harness::quiet());
            up(h);
            for (std::uint64_t id = 1; id <= 4; ++id)
                h.send(id);
            h.drain();
            h.core.cancel(victim, terminal, h.now);
            CHECK(h.drain() == std::vector<action>{action::complete(victim, asio_error::operation_aborted)});
            for (std::uint64_t id = 1; id <= 4; ++id) {
                if (id == victim)
                    continue;
                h.wrote();
                h.ack(id);
                h.drain();
                CHECK(h.succeeded(id));
            }
            CHECK(std::find(h.written.begin(), h.written.end(), victim) == h.written.end());
            h.check_all_completed(1, 4);
            h.check_counted();
        }
    }
}

TEST_CASE("terminal cancellation of a message in flight completes it at once and still consumes its ACK")
{
    harness h;
    up(h);
    h.send(1);
    h.send(2);
    h.wrote();
    h.drain();
    h.core.cancel(1, false, h.now); // partial cancellation cannot undo a write
    CHECK(h.drain().empty());
    CHECK(h.times(1) == 0);
    h.core.cancel(1, true, h.now);
    CHECK(h.drain() == std::vector<action>{action::complete(1, asio_error::operation_aborted)});
    CHECK(h.written == std::vector<std::uint64_t>{1});
    h.ack(1);
    h.drain();
    CHECK(h.written == std::vector<std::uint64_t>{1, 2});
    CHECK(h.times(1) == 1);
    CHECK(h.counters.acknowledged == 0); // counted once, as failed
    CHECK(h.counters.failed == 1);
    h.core.cancel(1, true, h.now); // a second cancellation finds nothing
    CHECK(h.drain().empty());
}

TEST_CASE("a message abandoned in flight is counted once, whatever becomes of its ACK")
{
    harness h;
    up(h);
    h.send(1);
    h.wrote();
    h.core.cancel(1, true, h.now);
    h.drain();
    h.advance(h.options.ack_timeout);
    h.drain();
    CHECK(h.counters.failed == 1);
    CHECK(h.counters.timed_out == 0);
    CHECK(h.times(1) == 1);
    h.check_counted();
}

TEST_CASE("a frame that arrives while nothing is in flight is discarded")
{
    harness h;
    up(h);
    h.core.received(h.link, ack_frame("NOBODY"), h.now);
    CHECK(h.drain() == std::vector<action>{note(event::discarded())});
    CHECK(h.counters.discarded == 1);
    CHECK(h.core.state() == connection_state::connected);
}

TEST_CASE("a stray frame in the same bytes as the right ACK never answers the next message")
{
    harness h;
    up(h);
    h.send(1);
    h.send(2);
    h.wrote();
    h.drain();
    h.core.received(h.link, ack_frame("C1") + ack_frame("C2"), h.now);
    h.drain();
    CHECK(h.succeeded(1));
    CHECK(h.times(2) == 0);
    CHECK(h.counters.discarded == 1);
    CHECK(h.written == std::vector<std::uint64_t>{1, 2});
    h.wrote();
    h.ack(2);
    h.drain();
    CHECK(h.succeeded(2));
}

TEST_CASE("an ACK split at every byte offset completes the same way")
{
    const std::string frame = "\x01garbage" + ack_frame("C1", "AE") + "\n";
    for (std::size_t cut = 0; cut <= frame.size(); ++cut) {
        harness h;
        up(h);
        h.send(1);
        h.wrote();
        h.core.received(h.link, std::string_view(frame).substr(0, cut), h.now);
        h.core.received(h.link, std::string_view(frame).substr(cut), h.now);
        h.drain();
        CHECK(h.ack_of(1).code() == hl7::ack_code::AE);
        CHECK(h.counters.rejected == 1);
    }
}

TEST_CASE("an ACK written one byte at a time completes the message")
{
    harness h;
    up(h);
    h.send(1);
    h.wrote();
    const std::string frame = ack_frame("C1");
    for (char c : frame)
        h.core.received(h.link, std::string_view(&c, 1), h.now);
    h.drain();
    CHECK(h.succeeded(1));
}

TEST_CASE("an oversized reply fails the message and resets the link")
{
    auto o = harness::defaults();
    o.max_frame = 64;
    harness h(o);
    up(h);
    h.send(1);
    h.wrote();
    h.core.received(h.link, "\x0b" + std::string(100, 'x'), h.now);
    auto acts = h.drain();
    CHECK(h.error_of(1) == errc::frame_too_large);
    CHECK(harness::has(acts, kind::close_socket));
}

TEST_CASE("the receive hook sees every frame before it is parsed")
{
    auto o = harness::defaults();
    std::vector<std::string> seen;
    o.receive_hook = [&seen](std::string_view payload) {
        seen.emplace_back(payload);
        std::string s(payload);
        std::reverse(s.begin(), s.end());
        return s;
    };
    harness h(o);
    up(h);
    h.send(1);
    h.wrote();
    std::string ack = ack_payload("C1");
    std::reverse(ack.begin(), ack.end());
    h.core.received(h.link, hl7::mllp::encode(ack) + hl7::mllp::encode("stray"), h.now);
    h.drain();
    CHECK(h.succeeded(1));
    CHECK(seen.size() == 2);
}

TEST_CASE("a receive hook that throws fails the message in flight with hook_failed and resets the link")
{
    auto o = harness::defaults();
    o.receive_hook = [](std::string_view) -> std::string { throw std::runtime_error("hook"); };
    harness h(o);
    up(h);
    h.core.received(h.link, ack_frame("NOBODY"), h.now); // nothing in flight: discarded
    CHECK(h.drain() == std::vector<action>{note(event::discarded(errc::hook_failed))});
    h.send(1);
    h.wrote();
    h.drain();
    h.ack(1);
    auto acts = h.drain();
    CHECK(h.error_of(1) == errc::hook_failed);
    CHECK(harness::has(acts, kind::close_socket));
    CHECK(h.core.state() == connection_state::backing_off);
}

TEST_CASE("backoff delays stay within the jitter around the schedule")
{
    hl7::detail::backoff b({.max_attempts = 10, .initial = 100ms, .max = 10s, .factor = 2.0, .jitter = 0.25}, 99);
    for (std::uint32_t n = 1; n <= 12; ++n) {
        const double base = std::min(10000.0, 100.0 * std::pow(2.0, n - 1));
        for (int i = 0; i < 200; ++i) {
            const double d = std::chrono::duration<double, std::milli>(b.delay(n)).count();
            CHECK(d >= base * 0.75 - 0.001);
            CHECK(d <= std::min(base * 1.25, 10000.0) + 0.001);
        }
    }
    hl7::detail::backoff fixed({.initial = 100ms, .jitter = 0}, 1);
    CHECK(fixed.delay(0) == 100ms);
    CHECK(fixed.delay(1) == 100ms);
}

TEST_CASE("the timer is armed no later than the earliest deadline and re-armed when it fires early")
{
    auto o = harness::defaults();
    o.queue_timeout = 2s;
    o.ack_timeout = 5s;
    harness h(o);
    up(h);
    const auto t0 = h.now;
    h.send(1);
    h.send(2);
    h.drain();
    CHECK(h.timer == t0 + 2s); // message 2's queue deadline comes before message 1's ACK deadline
    h.wrote();
    h.ack(1);
    h.drain();
    CHECK(h.timer == t0 + 2s); // message 2 is in flight: its ACK deadline is later, the timer stays
    h.tick();
    CHECK(h.times(2) == 0); // fired early: nothing was due
    CHECK(h.timer == t0 + 5s); // armed again for message 2's ACK deadline
    h.wrote();
    h.ack(2);
    h.drain();
    CHECK(h.succeeded(2));
    h.tick();
    CHECK(h.timer == core_clock::time_point::max()); // nothing due any more: not armed again
}

TEST_CASE("in the steady state the timer is not touched for every message")
{
    harness h;
    up(h);
    std::size_t arms = 0;
    for (std::uint64_t id = 1; id <= 100; ++id) {
        h.send(id);
        h.wrote();
        h.ack(id);
        h.now += 1ms;
        for (const action& a : h.drain())
            arms += a.what() == kind::arm_timer;
    }
    CHECK(arms == 0);
    h.check_all_completed(1, 100);
}

TEST_CASE("closing lets the timer go")
{
    harness h;
    up(h);
    h.core.close(close_mode::graceful, h.now);
    h.drain();
    CHECK(h.timer == core_clock::time_point::max());
}

TEST_CASE("without an observer no notify actions are produced")
{
    harness h(harness::quiet());
    up(h);
    h.send(1);
    h.wrote();
    h.ack(1);
    h.drain();
    CHECK(h.events.empty());
    CHECK(h.succeeded(1));
}

TEST_CASE("an exchange with a failure injected at any step still completes every send exactly once")
{
    // The steps of a normal exchange of three messages; each run injects a failure at one step
    // (in the manner of Boost.MySQL's network error injection), then closes at once.
    enum class fault { refused, write_error, reset, timeout };
    for (const fault f : {fault::refused, fault::write_error, fault::reset, fault::timeout}) {
        for (int at = 0; at < 12; ++at) {
            CAPTURE(static_cast<int>(f));
            CAPTURE(at);
            harness h;
            int step = 0;
            auto inject = [&]() {
                if (step++ != at)
                    return false;
                switch (f) {
                case fault::refused: h.core.connect_failed(h.link, asio_error::connection_refused, h.now); break;
                case fault::write_error: h.core.written(h.link, asio_error::broken_pipe, h.now); break;
                case fault::reset: h.core.read_failed(h.link, asio_error::connection_reset, h.now); break;
                case fault::timeout: h.advance(h.options.ack_timeout); break;
                }
                h.drain();
                return true;
            };
            h.core.start(h.now);
            h.drain();
            for (std::uint64_t id = 1; id <= 3; ++id)
                h.send(id);
            h.drain();
            inject();
            h.connect_ok();
            h.drain();
            for (std::uint64_t id = 1; id <= 3; ++id) {
                inject();
                h.wrote();
                h.drain();
                inject();
                h.ack(id);
                h.drain();
                inject();
            }
            h.core.close(close_mode::immediate, h.now);
            h.drain();
            h.check_all_completed(1, 3);
            h.check_counted();
            CHECK(h.core.state() == connection_state::closed);
        }
    }
}
