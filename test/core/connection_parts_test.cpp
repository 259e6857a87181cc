// The small machines a connection's core is composed of, each on its own: the backoff
// schedule, the link's life, the send queue, the window of messages in flight and the lazy
// timer.
#include "core/backoff.hpp"
#include "core/flight_window.hpp"
#include "core/lazy_timer.hpp"
#include "core/link_life.hpp"
#include "core/send_queue.hpp"

#include "support/core_harness.hpp"

#include <boost/asio/error.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <set>
#include <vector>

using hl7::errc;
using hl7::connection_state;
using namespace hl7::test;
namespace asio_error = boost::asio::error;
namespace detail = hl7::detail;

namespace {

std::vector<action> drain(detail::output& out)
{
    std::vector<action> acts;
    action a;
    while (out.next(a))
        acts.push_back(std::move(a));
    return acts;
}

} // namespace

// --- backoff -----------------------------------------------------------------------------

TEST_CASE("backoff delays stay within [0, max] for any policy, jitter included")
{
    std::mt19937_64 rng(2024);
    std::uniform_int_distribution<std::int64_t> ms(-1000, 120000);
    std::uniform_real_distribution<double> unit(0.0, 1.0);
    for (int policy = 0; policy < 2000; ++policy) {
        hl7::reconnect_policy p;
        p.initial = std::chrono::milliseconds(ms(rng));
        p.max = std::chrono::milliseconds(ms(rng));
        p.factor = 0.5 + 4 * unit(rng);
        p.jitter = policy % 7 == 0 ? 1.0 : unit(rng);
        CAPTURE(p.initial.count());
        CAPTURE(p.max.count());
        CAPTURE(p.factor);
        CAPTURE(p.jitter);
        detail::backoff b(p, rng());
        const auto cap = std::chrono::duration_cast<core_clock::duration>(std::max(p.max, std::chrono::milliseconds(0)));
        for (std::uint32_t failures = 0; failures <= 40; ++failures) {
            const auto d = b.delay(failures);
            REQUIRE(d >= core_clock::duration::zero());
            REQUIRE(d <= cap);
        }
    }
}

TEST_CASE("backoff delays at the cap keep a spread below it")
{
    // A delay grown past max is capped, and its jitter never reaches over: 34 s with a 30 s
    // maximum was the bug.
    detail::backoff b({.initial = 1s, .max = 30s, .factor = 2.0, .jitter = 0.2}, 5);
    std::set<core_clock::duration::rep> seen;
    for (int i = 0; i < 1000; ++i) {
        const auto d = b.delay(20);
        CHECK(d <= 30s);
        CHECK(d >= 24s);
        seen.insert(d.count());
    }
    CHECK(seen.size() > 100);
}

TEST_CASE("jitter spreads the delays rather than repeating one value")
{
    detail::backoff b({.initial = 1000ms, .jitter = 0.5}, 7);
    std::set<core_clock::duration::rep> seen;
    for (int i = 0; i < 50; ++i)
        seen.insert(b.delay(1).count());
    CHECK(seen.size() > 40);
}

TEST_CASE("backoff with nonsense values stays sane")
{
    detail::backoff nan({.initial = 100ms, .max = 1s, .factor = std::nan(""), .jitter = std::nan("")}, 1);
    CHECK(nan.delay(5) == 100ms);
    detail::backoff negative({.initial = -5s, .max = -1s, .factor = 2, .jitter = 0.5}, 1);
    CHECK(negative.delay(3) == core_clock::duration::zero());
    detail::backoff huge({.initial = 1s, .max = std::chrono::milliseconds::max(), .factor = 1e308, .jitter = 0}, 1);
    CHECK(huge.delay(100) == std::chrono::hours(24 * 365));
}

// --- link_life ---------------------------------------------------------------------------

namespace {

struct link_harness {
    explicit link_harness(hl7::connection_options o = harness::defaults())
        : options(std::move(o)), link(options, counters, status, 1)
    {
    }
    hl7::connection_options options;
    detail::counter_block counters;
    detail::status_block status;
    detail::output out{true};
    detail::link_life link;
    core_clock::time_point now = core_clock::time_point{} + 1h;
};

} // namespace

TEST_CASE("the link's life: connect, fail, back off, connect again, lose the link, back off")
{
    link_harness l;
    const auto t = l.now;
    CHECK(l.link.start(l.now, l.out));
    CHECK(drain(l.out) == std::vector<action>{action::notify(event::connecting(1)), action::connect(1, 1)});
    CHECK(l.link.deadline() == t + 10s);
    CHECK_FALSE(l.link.start(l.now, l.out)); // already connecting
    CHECK_FALSE(l.link.attempt_failed(1, asio_error::connection_refused, l.now, l.out));
    CHECK(drain(l.out) == std::vector<action>{action::close_socket(1),
                                              action::notify(event::reconnect_scheduled(2, 200ms, asio_error::connection_refused))});
    CHECK(l.link.state() == connection_state::backing_off);
    CHECK(l.link.deadline() == t + 200ms);
    CHECK_FALSE(l.link.timer_fired(t + 199ms, l.out)); // early: nothing
    CHECK(drain(l.out).empty());
    l.now = t + 200ms;
    CHECK_FALSE(l.link.timer_fired(l.now, l.out));
    CHECK(drain(l.out) == std::vector<action>{action::notify(event::connecting(2)), action::connect(2, 2)});
    CHECK_FALSE(l.link.connected(1, {}, l.now, l.out)); // stale
    CHECK(l.link.connected(2, {}, l.now, l.out));
    CHECK(drain(l.out) == std::vector<action>{action::notify(event::connected({}))});
    CHECK(l.link.up());
    CHECK(l.link.deadline() == core_clock::time_point::max());
    CHECK_FALSE(l.link.lost(asio_error::connection_reset, false, l.now, l.out));
    CHECK(drain(l.out) == std::vector<action>{action::close_socket(2),
                                              action::notify(event::disconnected(asio_error::connection_reset)),
                                              action::notify(event::reconnect_scheduled(1, 200ms, asio_error::connection_reset))});
    CHECK(l.link.id() == 3);
    CHECK(l.counters.reconnects == 0);
}

TEST_CASE("the link gives up after the maximum of consecutive failed attempts")
{
    auto o = harness::defaults();
    o.reconnect.max_attempts = 2;
    link_harness l(o);
    CHECK(l.link.start(l.now, l.out));
    CHECK_FALSE(l.link.attempt_failed(l.link.id(), asio_error::connection_refused, l.now, l.out));
    l.now = l.link.deadline();
    CHECK_FALSE(l.link.timer_fired(l.now, l.out));
    drain(l.out);
    CHECK(l.link.attempt_failed(l.link.id(), errc::resolve_failed, l.now, l.out));
    CHECK(drain(l.out) == std::vector<action>{action::close_socket(2), action::notify(event::gave_up(2, errc::resolve_failed))});
    CHECK(l.link.state() == connection_state::failed);
    CHECK(l.link.deadline() == core_clock::time_point::max());
    CHECK(l.link.start(l.now, l.out)); // start() tries again, from one
    CHECK(drain(l.out) == std::vector<action>{action::notify(event::connecting(1)), action::connect(3, 1)});
}

TEST_CASE("closing the link closes its socket once and reports closed, again on every close")
{
    link_harness l;
    CHECK(l.link.start(l.now, l.out));
    CHECK(l.link.connected(1, {}, l.now, l.out));
    l.link.begin_closing();
    drain(l.out);
    CHECK_FALSE(l.link.lost(asio_error::eof, false, l.now, l.out));
    CHECK(drain(l.out) == std::vector<action>{action::close_socket(1), action::notify(event::disconnected(asio_error::eof)),
                                              action::notify(event::closed()), action::closed()});
    l.link.close(l.out);
    CHECK(drain(l.out) == std::vector<action>{action::closed()});
}

// --- send_queue --------------------------------------------------------------------------

TEST_CASE("the send queue keeps order, removes from anywhere and expires from the front")
{
    detail::counter_block counters;
    detail::send_queue q(3, counters);
    const auto t = core_clock::time_point{} + 1h;
    q.push(1, "C1", t + 1s);
    q.push(2, "C2", t + 2s);
    q.push(3, "C3", t + 3s);
    CHECK(q.full());
    CHECK(counters.queued == 3);
    CHECK(q.remove(2));
    CHECK_FALSE(q.remove(2));
    CHECK(counters.queued == 2);
    CHECK(q.deadline() == t + 1s);
    std::vector<std::uint64_t> expired;
    q.expire(t + 1s, [&](std::uint64_t id) { expired.push_back(id); });
    CHECK(expired == std::vector<std::uint64_t>{1});
    CHECK(q.front().id == 3);
    CHECK(q.pop().control_id == "C3");
    CHECK(q.empty());
    CHECK(q.deadline() == core_clock::time_point::max());
    CHECK(counters.queued == 0);
}

// --- flight_window -----------------------------------------------------------------------

TEST_CASE("the window holds flights in write order with one write at a time, and finds them by control id")
{
    detail::flight_window w(3);
    const auto t = core_clock::time_point{} + 1h;
    CHECK_FALSE(w.writing());
    w.start(1, "C1", t, t + 10s);
    CHECK(w.writing());
    CHECK(w.wrote().id == 1);
    CHECK_FALSE(w.writing());
    w.start(2, "C2", t + 1s, t + 11s);
    w.wrote();
    w.start(3, "C3", t + 2s, t + 12s);
    CHECK(w.full());
    CHECK(w.holds("C2"));
    CHECK_FALSE(w.holds("C4"));
    CHECK(w.deadline() == t + 10s);
    CHECK(w.expired(t + 11s) == 2);
    REQUIRE(w.find("C2") != nullptr);
    CHECK(w.take(*w.find("C2")).id == 2);
    CHECK(w.recently_finished("C2"));
    CHECK_FALSE(w.recently_finished("C1"));
    CHECK(w.abandon(3));
    CHECK_FALSE(w.abandon(3));
    CHECK(w.awaited()); // C1 still is
    auto rest = w.take_all();
    CHECK(rest.size() == 2);
    CHECK(w.empty());
    CHECK(w.recently_finished("C1"));
    CHECK_FALSE(w.awaited());
}

TEST_CASE("the window remembers at least the last window's worth of finished control ids and more")
{
    detail::flight_window w(4);
    const auto t = core_clock::time_point{} + 1h;
    for (int i = 0; i < 30; ++i) {
        w.start(static_cast<std::uint64_t>(i), harness::cid(static_cast<std::uint64_t>(i)), t, t + 1s);
        w.wrote();
        w.take(w.oldest());
    }
    for (int i = 30 - 12; i < 30; ++i)
        CHECK(w.recently_finished(harness::cid(static_cast<std::uint64_t>(i))));
    CHECK_FALSE(w.recently_finished("C0"));
}

// --- lazy_timer --------------------------------------------------------------------------

TEST_CASE("the lazy timer arms only for an earlier deadline, and lets go once")
{
    detail::output out(false);
    detail::lazy_timer timer;
    const auto t = core_clock::time_point{} + 1h;
    timer.want(t + 5s, out);
    timer.want(t + 9s, out); // later: the timer fires by then anyway
    timer.want(t + 2s, out);
    CHECK(drain(out) == std::vector<action>{action::arm_timer(t + 5s), action::arm_timer(t + 2s)});
    timer.fired();
    CHECK(timer.armed() == core_clock::time_point::max());
    timer.release(out);
    CHECK(drain(out).empty());
    timer.want(t + 3s, out);
    timer.release(out);
    CHECK(drain(out) == std::vector<action>{action::arm_timer(t + 3s), action::arm_timer(core_clock::time_point::max())});
}

TEST_CASE("deadlines saturate instead of overflowing")
{
    const auto t = core_clock::time_point{} + 1h;
    CHECK(detail::after(t, 5s) == t + 5s);
    CHECK(detail::after(t, std::chrono::milliseconds::max()) == core_clock::time_point::max());
    CHECK(detail::after(t, -5s) == t);
}
