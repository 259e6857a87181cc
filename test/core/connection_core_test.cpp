// The connection's I/O-free core, stepped with a made-up clock: no sockets, no sleeps.
#include "core/connection_core.hpp"

#include <hl7/model/ack.hpp>

#include "support/util.hpp"

#include <boost/asio/error.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using hl7::errc;
using hl7::connection_state;
using core_clock = hl7::detail::clock;
using action = hl7::detail::connection_core::action;
using kind = action::kind;

namespace {

std::string ack_frame(std::string_view control_id, std::string_view code = "AA")
{
    return hl7::mllp::encode("MSH|^~\\&|RCV|F|SND|F|20240101||ACK^A01^ACK|A" + std::string(control_id) +
                             "|P|2.5.1\rMSA|" + std::string(code) + "|" + std::string(control_id) + "\r");
}

struct harness {
    explicit harness(hl7::connection_options o = defaults())
        : options(std::move(o)), core(options, counters, 1)
    {
    }

    static hl7::connection_options defaults()
    {
        hl7::connection_options o;
        o.reconnect.jitter = 0;
        o.observer = [](const hl7::connection_event&) {};
        return o;
    }

    // Every action the core has for us, in order.
    std::vector<action> drain()
    {
        std::vector<action> out;
        action a;
        while (core.next(a))
            out.push_back(std::move(a));
        for (const action& x : out) {
            if (x.what == kind::connect)
                link = x.link;
            if (x.what == kind::complete)
                completed[x.id] = x.error;
            if (x.what == kind::write)
                written.push_back(x.id);
            if (x.what == kind::notify)
                events.push_back(x.event());
            if (x.what == kind::arm_timer)
                timer = x.deadline;
        }
        return out;
    }

    void advance(core_clock::duration d)
    {
        now += d;
        core.timer_fired(now);
    }

    // Lets time pass until the timer makes something happen: it may fire early (it is armed
    // lazily) and only arm itself again.
    // Returns the actions of the last firing.
    std::vector<action> fire()
    {
        for (;;) {
            auto acts = tick();
            const bool only_rearmed = !acts.empty() && std::all_of(acts.begin(), acts.end(), [](const action& a) {
                return a.what == kind::arm_timer;
            });
            if (!only_rearmed || timer == core_clock::time_point::max())
                return acts;
        }
    }

    // Runs the clock to the armed timer, once.
    std::vector<action> tick()
    {
        REQUIRE(timer != core_clock::time_point::max());
        now = timer;
        core.timer_fired(now);
        return drain();
    }

    void connect_ok()
    {
        core.connected(link, {}, now);
    }

    // The control id of send `id`.
    static std::string cid(std::uint64_t id)
    {
        std::string s = std::to_string(id);
        s.insert(s.begin(), 'C');
        return s;
    }

    void send(std::uint64_t id)
    {
        core.send(id, cid(id), now);
    }

    void ack(std::uint64_t id, std::string_view code = "AA")
    {
        core.received(link, ack_frame(cid(id), code), now);
    }

    bool has(const std::vector<action>& acts, kind k)
    {
        return std::any_of(acts.begin(), acts.end(), [k](const action& a) { return a.what == k; });
    }

    std::size_t count_events(hl7::connection_event::kind k) const
    {
        return static_cast<std::size_t>(
            std::count_if(events.begin(), events.end(), [k](const hl7::detail::owned_event& e) { return e.what == k; }));
    }

    hl7::connection_options options;
    hl7::detail::counter_block counters;
    hl7::detail::connection_core core;
    core_clock::time_point now = core_clock::time_point{} + 1h;
    std::uint64_t link = 0;
    core_clock::time_point timer = core_clock::time_point::max();
    std::map<std::uint64_t, boost::system::error_code> completed;
    std::vector<std::uint64_t> written;
    std::vector<hl7::detail::owned_event> events;
};

// A connected harness.
harness& up(harness& h)
{
    h.core.start(h.now);
    h.drain();
    h.connect_ok();
    h.drain();
    return h;
}

} // namespace

TEST_CASE("a connection connects at once and writes a queued message when connected")
{
    harness h;
    h.core.start(h.now);
    auto acts = h.drain();
    REQUIRE(h.has(acts, kind::connect));
    CHECK(h.core.state() == connection_state::connecting);
    CHECK(h.timer == h.now + h.options.connect_timeout);
    h.send(1);
    h.drain();
    CHECK(h.written.empty());
    CHECK(h.counters.queued == 1);
    h.connect_ok();
    h.drain();
    CHECK(h.core.state() == connection_state::connected);
    CHECK(h.written == std::vector<std::uint64_t>{1});
    CHECK(h.counters.queued == 0);
    CHECK(h.timer <= h.now + h.options.ack_timeout);
}

TEST_CASE("a lazy connection stays idle until its first send")
{
    auto o = harness::defaults();
    o.lazy = true;
    harness h(o);
    CHECK(h.core.state() == connection_state::idle);
    CHECK(h.drain().empty());
    h.send(1);
    auto acts = h.drain();
    CHECK(h.has(acts, kind::connect));
    CHECK(h.core.state() == connection_state::connecting);
}

TEST_CASE("the matching ACK completes the send, whatever its code")
{
    harness h;
    up(h);
    for (std::uint64_t id = 1; id <= 6; ++id) {
        h.send(id);
        h.core.written(h.link, {}, h.now);
        h.now += 3ms;
        const char* codes[] = {"AA", "AE", "AR", "CA", "CE", "CR"};
        h.ack(id, codes[id - 1]);
        auto acts = h.drain();
        REQUIRE(h.completed.count(id));
        CHECK_FALSE(h.completed[id]);
        auto done = std::find_if(acts.begin(), acts.end(), [](const action& a) { return a.what == kind::complete; });
        REQUIRE(done != acts.end());
        const hl7::ack& ack = std::get<hl7::ack>(done->data);
        CHECK(to_string(ack.code()) == codes[id - 1]);
        CHECK(ack.control_id() == harness::cid(id));
        CHECK(ack.round_trip() == 3ms);
    }
    CHECK(h.counters.sent == 6);
    CHECK(h.counters.acknowledged == 2);
    CHECK(h.counters.rejected == 4);
    CHECK(h.counters.failed == 0);
    CHECK(h.core.state() == connection_state::connected);
    const auto& ack = *std::find_if(h.events.begin(), h.events.end(),
                                    [](const auto& e) { return e.what == hl7::connection_event::kind::acknowledged; });
    CHECK(ack.control_id == "C1");
    CHECK(ack.code == hl7::ack_code::AA);
    CHECK(ack.round_trip == 3ms);
}

TEST_CASE("messages are written one at a time in the order they were sent")
{
    harness h;
    up(h);
    for (std::uint64_t id = 1; id <= 5; ++id)
        h.send(id);
    h.drain();
    CHECK(h.written == std::vector<std::uint64_t>{1});
    CHECK(h.counters.queued == 4);
    for (std::uint64_t id = 1; id <= 5; ++id) {
        h.core.written(h.link, {}, h.now);
        h.ack(id);
        h.drain();
    }
    CHECK(h.written == std::vector<std::uint64_t>{1, 2, 3, 4, 5});
    CHECK(h.completed.size() == 5);
    CHECK(h.counters.queued == 0);
}

TEST_CASE("the next message waits until the previous write has completed")
{
    harness h;
    up(h);
    h.send(1);
    h.send(2);
    h.drain();
    h.ack(1); // the ACK overtakes the write's completion
    h.drain();
    CHECK_FALSE(h.completed[1]);
    CHECK(h.written == std::vector<std::uint64_t>{1});
    h.core.written(h.link, {}, h.now);
    h.drain();
    CHECK(h.written == std::vector<std::uint64_t>{1, 2});
}

TEST_CASE("an ACK with the wrong MSA-2 fails the message and resets the link")
{
    harness h;
    up(h);
    h.send(1);
    h.core.written(h.link, {}, h.now);
    h.drain();
    const auto old_link = h.link;
    h.core.received(h.link, ack_frame("SOMEONE-ELSE"), h.now);
    auto acts = h.drain();
    CHECK(h.completed[1] == errc::ack_mismatch);
    CHECK(h.has(acts, kind::close_socket));
    CHECK(h.core.state() == connection_state::backing_off);
    CHECK(h.counters.failed == 1);
    h.fire();
    h.drain();
    CHECK(h.link != old_link);
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
        h.core.written(h.link, {}, h.now);
        h.core.received(h.link, reply, h.now);
        h.drain();
        CHECK(h.completed[1] == errc::invalid_ack);
        CHECK(h.core.state() == connection_state::backing_off);
    }
}

TEST_CASE("no ACK within the ACK timeout fails the message and resets the link")
{
    harness h;
    up(h);
    h.send(1);
    h.send(2);
    h.core.written(h.link, {}, h.now);
    h.drain();
    const auto old_link = h.link;
    h.advance(h.options.ack_timeout - 1ms);
    h.drain();
    CHECK(h.completed.empty());
    h.advance(1ms);
    auto acts = h.drain();
    CHECK(h.completed[1] == errc::ack_timeout);
    CHECK(h.has(acts, kind::close_socket));
    CHECK(h.counters.timed_out == 1);
    CHECK(h.counters.failed == 0);
    CHECK(h.count_events(hl7::connection_event::kind::timed_out) == 1);
    // The late ACK on the old link is ignored.
    h.core.received(old_link, ack_frame("C1"), h.now);
    h.drain();
    CHECK(h.counters.acknowledged == 0);
    // Reconnect after the initial delay; message 2 goes out on the new link.
    CHECK(h.timer == h.now + h.options.reconnect.initial);
    h.fire();
    h.drain();
    h.connect_ok();
    h.drain();
    CHECK(h.written == std::vector<std::uint64_t>{1, 2});
    // A late ACK of message 1 arriving now is discarded and does not answer message 2.
    h.core.written(h.link, {}, h.now);
    h.ack(1);
    h.drain();
    CHECK(h.completed.count(2) == 0);
    CHECK(h.counters.discarded == 1);
    h.ack(2);
    h.drain();
    CHECK_FALSE(h.completed[2]);
    CHECK(h.counters.reconnects == 1);
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
        h.core.connect_failed(h.link, boost::asio::error::connection_refused, h.now);
        h.drain();
        if (attempt < 6) {
            REQUIRE(h.core.state() == connection_state::backing_off);
            delays.push_back(h.timer - failed_at);
            h.fire();
            h.drain();
        }
    }
    CHECK(delays == std::vector<core_clock::duration>{100ms, 300ms, 900ms, 1s, 1s});
    std::vector<std::uint32_t> scheduled;
    for (const auto& e : h.events)
        if (e.what == hl7::connection_event::kind::reconnect_scheduled)
            scheduled.push_back(e.attempt);
    CHECK(scheduled == std::vector<std::uint32_t>{2, 3, 4, 5, 6});
    CHECK(h.core.state() == connection_state::failed);
    CHECK(h.completed[1] == errc::not_connected);
    CHECK(h.count_events(hl7::connection_event::kind::gave_up) == 1);
    CHECK(h.events.back().attempt == 6);
    CHECK(h.events.back().error == boost::asio::error::connection_refused);
    CHECK(h.timer == core_clock::time_point::max());
    // Every later send fails at once until the application starts the connection again.
    h.send(2);
    h.drain();
    CHECK(h.completed[2] == errc::not_connected);
    h.core.start(h.now);
    h.drain();
    CHECK(h.core.state() == connection_state::connecting);
    CHECK(h.events.back().attempt == 1);
    h.connect_ok();
    h.send(3);
    h.drain();
    CHECK(h.written == std::vector<std::uint64_t>{3});
}

TEST_CASE("a successful connection resets the count of failed attempts")
{
    auto o = harness::defaults();
    o.reconnect.max_attempts = 3;
    harness h(o);
    h.core.start(h.now);
    h.drain();
    for (int round = 0; round < 5; ++round) {
        h.core.connect_failed(h.link, boost::asio::error::connection_refused, h.now);
        h.drain();
        h.fire();
        h.drain();
        h.core.connect_failed(h.link, boost::asio::error::connection_refused, h.now);
        h.drain();
        h.fire();
        h.drain();
        h.connect_ok();
        h.drain();
        REQUIRE(h.core.state() == connection_state::connected);
        h.core.read_failed(h.link, boost::asio::error::eof, h.now);
        h.drain();
        h.fire();
        h.drain();
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
            h.drain();
        }
    }
    CHECK(h.completed[1] == errc::tls_no_client_certificate);
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
        h.core.read_failed(h.link, boost::asio::error::connection_reset, h.now);
        h.drain();
        REQUIRE(h.core.state() == connection_state::backing_off);
        h.fire();
        h.drain();
        h.connect_ok();
        h.drain();
    }
    CHECK(h.core.state() == connection_state::connected);
}

TEST_CASE("a reconnect policy without a maximum never gives up")
{
    auto o = harness::defaults();
    o.reconnect = {.max_attempts = 0, .initial = 10ms, .max = 50ms, .factor = 2.0, .jitter = 0};
    harness h(o);
    h.core.start(h.now);
    h.drain();
    for (int i = 0; i < 1000; ++i) {
        h.core.connect_failed(h.link, boost::asio::error::connection_refused, h.now);
        h.drain();
        REQUIRE(h.core.state() == connection_state::backing_off);
        CHECK(h.timer - h.now <= 50ms);
        h.fire();
        h.drain();
    }
}

TEST_CASE("a connection attempt that outlasts the connect timeout counts as a failure")
{
    harness h;
    h.core.start(h.now);
    h.drain();
    const auto first = h.link;
    h.advance(h.options.connect_timeout);
    auto acts = h.drain();
    CHECK(h.has(acts, kind::close_socket));
    CHECK(h.core.state() == connection_state::backing_off);
    REQUIRE(h.count_events(hl7::connection_event::kind::reconnect_scheduled) == 1);
    CHECK(h.events.back().error == errc::connect_timeout);
    // The aborted attempt's late report is ignored.
    h.core.connect_failed(first, boost::asio::error::operation_aborted, h.now);
    h.core.connected(first, {}, h.now);
    h.drain();
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
    h.drain();
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
    h.core.written(h.link, {}, h.now);
    h.drain();
    h.core.read_failed(h.link, boost::asio::error::connection_reset, h.now);
    auto acts = h.drain();
    CHECK(h.completed[1] == errc::connection_lost);
    CHECK(h.has(acts, kind::close_socket));
    CHECK(h.count_events(hl7::connection_event::kind::disconnected) == 1);
    h.fire();
    h.drain();
    h.connect_ok();
    h.drain();
    for (std::uint64_t id = 2; id <= 4; ++id) {
        h.core.written(h.link, {}, h.now);
        h.ack(id);
        h.drain();
        CHECK_FALSE(h.completed[id]);
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
    h.core.read_failed(h.link, boost::asio::error::connection_reset, h.now);
    h.drain();
    h.fire();
    h.drain();
    h.connect_ok();
    h.drain();
    REQUIRE(h.written == std::vector<std::uint64_t>{1, 2});
    h.core.written(old_link, boost::asio::error::operation_aborted, h.now);
    h.core.read_failed(old_link, boost::asio::error::operation_aborted, h.now);
    h.core.received(old_link, ack_frame("C2"), h.now);
    h.drain();
    CHECK(h.core.state() == connection_state::connected);
    CHECK(h.completed.count(2) == 0);
    h.core.written(h.link, {}, h.now);
    h.ack(2);
    h.drain();
    CHECK_FALSE(h.completed[2]);
}

TEST_CASE("a failed write fails the message in flight as connection_lost")
{
    harness h;
    up(h);
    h.send(1);
    h.drain();
    h.core.written(h.link, boost::asio::error::broken_pipe, h.now);
    h.drain();
    CHECK(h.completed[1] == errc::connection_lost);
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
    CHECK(h.completed.size() == 2);
    CHECK(h.completed[4] == errc::queue_full);
    CHECK(h.completed[5] == errc::queue_full);
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
    h.drain();
    CHECK(h.completed[1] == errc::queue_timeout);
    CHECK(h.completed.count(2) == 0);
    CHECK(h.timer == h.now + 2s);
    h.connect_ok();
    h.drain();
    CHECK(h.written == std::vector<std::uint64_t>{2});
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
    CHECK(h.completed.empty());
}

TEST_CASE("close fails queued messages, lets the one in flight finish, then closes")
{
    harness h;
    up(h);
    h.send(1);
    h.send(2);
    h.core.written(h.link, {}, h.now);
    h.drain();
    h.core.close(h.now);
    auto acts = h.drain();
    CHECK(h.completed[2] == errc::closed);
    CHECK(h.completed.count(1) == 0);
    CHECK(h.core.state() == connection_state::closing);
    CHECK_FALSE(h.has(acts, kind::closed));
    h.send(3);
    h.drain();
    CHECK(h.completed[3] == errc::closed);
    h.ack(1);
    acts = h.drain();
    CHECK_FALSE(h.completed[1]);
    CHECK(h.has(acts, kind::close_socket));
    CHECK(h.has(acts, kind::closed));
    CHECK(h.core.state() == connection_state::closed);
    CHECK(h.timer == core_clock::time_point::max());
    // Idempotent: closing again reports closed again, and nothing reconnects.
    h.core.close(h.now);
    acts = h.drain();
    CHECK(h.has(acts, kind::closed));
    h.core.start(h.now);
    h.core.read_failed(h.link, boost::asio::error::eof, h.now);
    CHECK_FALSE(h.has(h.drain(), kind::connect));
}

TEST_CASE("close waits for the ACK timeout of the message in flight")
{
    harness h;
    up(h);
    h.send(1);
    h.core.written(h.link, {}, h.now);
    h.core.close(h.now);
    h.drain();
    auto acts = h.fire();
    CHECK(h.completed[1] == errc::ack_timeout);
    CHECK(h.has(acts, kind::closed));
    CHECK_FALSE(h.has(acts, kind::connect));
}

TEST_CASE("close while backing off or connecting closes at once")
{
    harness h;
    h.core.start(h.now);
    h.send(1);
    h.drain();
    h.core.close(h.now);
    auto acts = h.drain();
    CHECK(h.completed[1] == errc::closed);
    CHECK(h.has(acts, kind::close_socket));
    CHECK(h.has(acts, kind::closed));
    harness b;
    b.core.start(b.now);
    b.drain();
    b.core.connect_failed(b.link, boost::asio::error::connection_refused, b.now);
    b.drain();
    b.core.close(b.now);
    CHECK(b.has(b.drain(), kind::closed));
    CHECK(b.core.state() == connection_state::closed);
}

TEST_CASE("cancelling a queued message removes it unsent")
{
    harness h;
    up(h);
    h.send(1);
    h.send(2);
    h.send(3);
    h.drain();
    h.core.cancel(2, false, h.now);
    h.drain();
    CHECK(h.completed[2] == boost::asio::error::operation_aborted);
    h.core.written(h.link, {}, h.now);
    h.ack(1);
    h.drain();
    CHECK(h.written == std::vector<std::uint64_t>{1, 3});
}

TEST_CASE("terminal cancellation of a message in flight completes it at once and still consumes its ACK")
{
    harness h;
    up(h);
    h.send(1);
    h.send(2);
    h.core.written(h.link, {}, h.now);
    h.drain();
    h.core.cancel(1, false, h.now); // partial cancellation cannot undo a write
    h.drain();
    CHECK(h.completed.count(1) == 0);
    h.core.cancel(1, true, h.now);
    h.drain();
    CHECK(h.completed[1] == boost::asio::error::operation_aborted);
    CHECK(h.written == std::vector<std::uint64_t>{1});
    h.ack(1);
    h.drain();
    CHECK(h.written == std::vector<std::uint64_t>{1, 2});
    CHECK(h.counters.acknowledged == 1);
    CHECK(h.completed.size() == 1);
}

TEST_CASE("a frame that arrives while nothing is in flight is discarded")
{
    harness h;
    up(h);
    h.core.received(h.link, ack_frame("NOBODY"), h.now);
    h.drain();
    CHECK(h.counters.discarded == 1);
    CHECK(h.count_events(hl7::connection_event::kind::discarded) == 1);
    CHECK(h.core.state() == connection_state::connected);
}

TEST_CASE("a stray frame in the same bytes as the right ACK never answers the next message")
{
    harness h;
    up(h);
    h.send(1);
    h.send(2);
    h.core.written(h.link, {}, h.now);
    h.drain();
    h.core.received(h.link, ack_frame("C1") + ack_frame("C2"), h.now);
    h.drain();
    CHECK_FALSE(h.completed[1]);
    CHECK(h.completed.count(2) == 0);
    CHECK(h.counters.discarded == 1);
    CHECK(h.written == std::vector<std::uint64_t>{1, 2});
    h.core.written(h.link, {}, h.now);
    h.ack(2);
    h.drain();
    CHECK_FALSE(h.completed[2]);
}

TEST_CASE("an ACK split at every byte offset completes the same way")
{
    const std::string frame = "\x01garbage" + ack_frame("C1", "AE") + "\n";
    for (std::size_t cut = 0; cut <= frame.size(); ++cut) {
        harness h;
        up(h);
        h.send(1);
        h.core.written(h.link, {}, h.now);
        h.core.received(h.link, std::string_view(frame).substr(0, cut), h.now);
        h.core.received(h.link, std::string_view(frame).substr(cut), h.now);
        h.drain();
        REQUIRE(h.completed.count(1));
        CHECK_FALSE(h.completed[1]);
        CHECK(h.counters.rejected == 1);
    }
}

TEST_CASE("an ACK written one byte at a time completes the message")
{
    harness h;
    up(h);
    h.send(1);
    h.core.written(h.link, {}, h.now);
    const std::string frame = ack_frame("C1");
    for (char c : frame)
        h.core.received(h.link, std::string_view(&c, 1), h.now);
    h.drain();
    CHECK_FALSE(h.completed[1]);
}

TEST_CASE("an oversized reply fails the message and resets the link")
{
    auto o = harness::defaults();
    o.max_frame = 64;
    harness h(o);
    up(h);
    h.send(1);
    h.core.written(h.link, {}, h.now);
    h.core.received(h.link, "\x0b" + std::string(100, 'x'), h.now);
    auto acts = h.drain();
    CHECK(h.completed[1] == errc::frame_too_large);
    CHECK(h.has(acts, kind::close_socket));
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
    h.core.written(h.link, {}, h.now);
    std::string ack = "MSH|^~\\&|R|F|S|F|20240101||ACK|X|P|2.5.1\rMSA|AA|C1\r";
    std::reverse(ack.begin(), ack.end());
    h.core.received(h.link, hl7::mllp::encode(ack), h.now);
    h.drain();
    CHECK_FALSE(h.completed[1]);
    CHECK(seen.size() == 1);
}

TEST_CASE("jittered backoff delays stay within the jitter around the schedule")
{
    hl7::detail::backoff b({.max_attempts = 10, .initial = 100ms, .max = 10s, .factor = 2.0, .jitter = 0.25}, 99);
    for (std::uint32_t n = 1; n <= 12; ++n) {
        const double base = std::min(10000.0, 100.0 * std::pow(2.0, n - 1));
        for (int i = 0; i < 200; ++i) {
            const double d = std::chrono::duration<double, std::milli>(b.delay(n)).count();
            CHECK(d >= base * 0.75 - 0.001);
            CHECK(d <= base * 1.25 + 0.001);
        }
    }
    hl7::detail::backoff fixed({.initial = 100ms, .jitter = 0}, 1);
    CHECK(fixed.delay(0) == 100ms);
    CHECK(fixed.delay(1) == 100ms);
}

TEST_CASE("jitter spreads the delays rather than repeating one value")
{
    hl7::detail::backoff b({.initial = 1000ms, .jitter = 0.5}, 7);
    std::set<core_clock::duration::rep> seen;
    for (int i = 0; i < 50; ++i)
        seen.insert(b.delay(1).count());
    CHECK(seen.size() > 40);
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
    h.core.written(h.link, {}, h.now);
    h.ack(1);
    h.drain();
    CHECK(h.timer == t0 + 2s); // message 2 is in flight: its ACK deadline is later, the timer stays
    h.tick();
    CHECK(h.completed.count(2) == 0); // fired early: nothing was due
    CHECK(h.timer == t0 + 5s);        // armed again for message 2's ACK deadline
    h.core.written(h.link, {}, h.now);
    h.ack(2);
    h.drain();
    CHECK_FALSE(h.completed[2]);
    h.tick();
    CHECK(h.timer == t0 + 5s); // nothing due any more: not armed again
}

TEST_CASE("in the steady state the timer is not touched for every message")
{
    harness h;
    up(h);
    std::size_t arms = 0;
    for (std::uint64_t id = 1; id <= 100; ++id) {
        h.send(id);
        h.core.written(h.link, {}, h.now);
        h.ack(id);
        h.now += 1ms;
        for (const action& a : h.drain())
            arms += a.what == kind::arm_timer;
    }
    CHECK(arms == 0);
    CHECK(h.completed.size() == 100);
}

TEST_CASE("closing lets the timer go")
{
    harness h;
    up(h);
    h.core.close(h.now);
    h.drain();
    CHECK(h.timer == core_clock::time_point::max());
}

TEST_CASE("without an observer no notify actions are produced")
{
    auto o = harness::defaults();
    o.observer = nullptr;
    harness h(o);
    up(h);
    h.send(1);
    h.core.written(h.link, {}, h.now);
    h.ack(1);
    h.drain();
    CHECK(h.events.empty());
    CHECK_FALSE(h.completed[1]);
}
