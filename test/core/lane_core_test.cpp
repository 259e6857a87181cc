// The lane's I/O-free core and its retry policy, stepped with a made-up clock: whole action
// sequences compared, a failure injected at every step of an exchange, and random runs against
// a simulated store and peer with crashes, checked for loss, unflagged duplicates and order.
#include "core/lane_core.hpp"
#include "core/retry_policy.hpp"

#include <hl7/model/ack.hpp>
#include <hl7/model/message.hpp>

#include "support/util.hpp"

#include <boost/asio/error.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <deque>
#include <map>
#include <ostream>
#include <random>
#include <set>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using hl7::errc;
using hl7::outbox_errc;
using hl7::outbox_state;
using hl7::detail::lane_change;
using hl7::detail::lane_core;
using hl7::detail::lane_note;
using action = lane_core::action;
using kind = action::kind;
using event_kind = hl7::outbox_event::kind;
using time_point = hl7::outbox_clock::time_point;

namespace hl7::detail {

std::ostream& operator<<(std::ostream& os, const lane_change& c)
{
    static const char* names[] = {"written", "requeued", "finished"};
    os << names[static_cast<int>(c.what)] << "(" << c.id;
    if (c.what == lane_change::kind::written)
        os << (c.possible_duplicate ? ", duplicate" : "");
    if (c.what == lane_change::kind::requeued)
        os << (c.uncount ? ", uncounted" : "") << ", '" << c.error << "'";
    if (c.what == lane_change::kind::finished)
        os << ", " << to_string(c.state) << ", " << (c.code ? to_string(*c.code) : "-") << ", '" << c.error << "'";
    return os << ")";
}

std::ostream& operator<<(std::ostream& os, const lane_core::action& a)
{
    static const char* names[] = {"claim", "fetch", "record", "send", "cancel", "arm_timer", "notify", "drained", "busy",
                                  "stopped"};
    os << names[static_cast<int>(a.what)];
    switch (a.what) {
    case kind::fetch: os << "(" << a.limit << ")"; break;
    case kind::record:
        os << "(";
        for (const auto& c : a.changes)
            os << c << " ";
        os << ")";
        break;
    case kind::send:
    case kind::cancel: os << "(" << a.id << ")"; break;
    case kind::arm_timer: os << "(" << a.deadline.time_since_epoch().count() << ")"; break;
    case kind::notify:
        os << "(" << static_cast<int>(a.note.what) << ", " << a.note.id << ", " << to_string(a.note.state)
           << (a.note.possible_duplicate ? ", duplicate" : "") << ", attempts " << a.note.attempts << ", "
           << a.note.error.message() << ")";
        break;
    case kind::stopped: os << "(" << a.error.message() << ")"; break;
    default: break;
    }
    return os;
}

} // namespace hl7::detail

namespace {

const time_point t0 = time_point(1'700'000'000s);

std::string cid(std::int64_t id)
{
    return hl7::test::label("C", id);
}

std::string message_bytes(std::int64_t id)
{
    return "MSH|^~\\&|SND|F|RCV|F|20240101||ADT^A01|" + cid(id) + "|P|2.5.1\rPID|1||" + cid(id) + "\r";
}

hl7::outbox_record rec(std::int64_t id, outbox_state state = outbox_state::queued, std::uint32_t attempts = 0)
{
    hl7::outbox_record r;
    r.id = id;
    r.destination = "127.0.0.1:2575";
    r.control_id = cid(id);
    r.state = state;
    r.attempts = attempts;
    r.enqueued_at = t0;
    r.queued_at = t0;
    r.message = message_bytes(id);
    return r;
}

hl7::ack make_ack(std::int64_t id, std::string_view code = "AA", std::string_view text = {})
{
    std::string bytes = "MSH|^~\\&|RCV|F|SND|F|20240101||ACK^A01^ACK|A" + cid(id) + "|P|2.5.1\rMSA|" +
                        std::string(code) + "|" + cid(id) + (text.empty() ? "" : "|" + std::string(text)) + "\r";
    return hl7::ack::read(hl7::message::parse(bytes).value(), 1500us).value();
}

hl7::outbox_retry_policy no_jitter(std::uint32_t max_attempts = 0, std::chrono::milliseconds max_age = 0ms)
{
    return {.initial = 1s, .max = 8s, .factor = 2.0, .jitter = 0, .max_attempts = max_attempts, .max_age = max_age};
}

lane_core::settings settings(std::size_t window = 1, hl7::outbox_retry_policy retry = no_jitter())
{
    return {.window = window, .batch = 32, .renew_every = 10s, .retry = retry, .seed = 7};
}

struct harness {
    explicit harness(lane_core::settings s = settings()) : core(s) {}

    std::vector<action> drain()
    {
        std::vector<action> out;
        action a;
        while (core.next(a))
            out.push_back(std::move(a));
        return out;
    }

    // Claims the lease and fetches `records`: returns what the fetch led to.
    std::vector<action> begin(std::vector<hl7::outbox_record> records)
    {
        core.start(now);
        REQUIRE(drain() == std::vector{action::claim()});
        core.claimed({}, now);
        REQUIRE(drain() == std::vector{action::fetch(32), action::arm_timer(now + 10s)});
        core.fetched({}, std::move(records), now);
        return drain();
    }

    time_point now = t0;
    lane_core core;
};

action written_note(std::int64_t id, std::uint32_t attempts, bool duplicate = false)
{
    return action::notify({.what = event_kind::written,
                           .id = id,
                           .control_id = cid(id),
                           .state = outbox_state::written,
                           .possible_duplicate = duplicate,
                           .attempts = attempts});
}

action outcome_note(std::int64_t id, outbox_state state, std::uint32_t attempts, bool duplicate = false)
{
    return action::notify({.what = event_kind::outcome,
                           .id = id,
                           .control_id = cid(id),
                           .state = state,
                           .possible_duplicate = duplicate,
                           .attempts = attempts});
}

action retry_note(std::int64_t id, outbox_state state, std::uint32_t attempts, boost::system::error_code ec,
                  hl7::outbox_clock::duration delay, bool duplicate = false)
{
    return action::notify({.what = event_kind::retry_scheduled,
                           .id = id,
                           .control_id = cid(id),
                           .state = state,
                           .possible_duplicate = duplicate,
                           .attempts = attempts,
                           .error = ec,
                           .delay = delay});
}

lane_change acknowledged(std::int64_t id, time_point at, std::string_view code = "AA")
{
    const hl7::ack a = make_ack(id, code);
    return lane_change::finish(id, at, outbox_state::acknowledged, "", a.code(), std::string(a.message().str()),
                               a.round_trip());
}

} // namespace

// --- the retry policy ------------------------------------------------------------------------

TEST_CASE("the retry delay doubles from the initial delay up to the maximum, without jitter exactly")
{
    hl7::detail::retry_schedule s(no_jitter(), 1);
    CHECK(s.delay(1) == 1s);
    CHECK(s.delay(2) == 2s);
    CHECK(s.delay(3) == 4s);
    CHECK(s.delay(4) == 8s);
    CHECK(s.delay(5) == 8s);
    CHECK(s.delay(1000) == 8s); // capped before it can overflow
}

TEST_CASE("the retry delay with jitter stays within its spread of the schedule")
{
    hl7::outbox_retry_policy p = no_jitter();
    p.jitter = 0.25;
    hl7::detail::retry_schedule s(p, 42);
    for (std::uint32_t attempts = 1; attempts < 8; ++attempts) {
        const auto base = std::chrono::duration<double>(std::min(8s, std::chrono::seconds(1 << (attempts - 1))));
        for (int i = 0; i < 50; ++i) {
            const auto d = std::chrono::duration<double>(s.delay(attempts));
            CHECK(d.count() >= base.count() * 0.75 - 1e-6);
            CHECK(d.count() <= base.count() * 1.25 + 1e-6);
        }
    }
}

TEST_CASE("connection failures and ACK timeouts are retried without end by default")
{
    hl7::detail::retry_schedule s(no_jitter(), 1);
    for (auto ec : {make_error_code(errc::ack_timeout), make_error_code(errc::connection_lost),
                    make_error_code(errc::not_connected), make_error_code(errc::invalid_ack)})
        CHECK(s.after_failure(ec, 100000, t0 - 24h * 365, t0) == hl7::detail::retry_decision::retry_after(8s));
}

TEST_CASE("a message that cannot be framed or sent is given up at once, whatever the policy")
{
    hl7::detail::retry_schedule s(no_jitter(), 1);
    for (auto e : {errc::block_byte_in_message, errc::message_too_large, errc::hook_failed})
        CHECK(s.after_failure(e, 1, t0, t0) == hl7::detail::retry_decision::give_up());
}

TEST_CASE("max_attempts and max_age give a failing message up once reached, not before")
{
    hl7::detail::retry_schedule by_attempts(no_jitter(3), 1);
    CHECK(by_attempts.after_failure(errc::ack_timeout, 2, t0, t0) == hl7::detail::retry_decision::retry_after(2s));
    CHECK(by_attempts.after_failure(errc::ack_timeout, 3, t0, t0) == hl7::detail::retry_decision::give_up());
    hl7::detail::retry_schedule by_age(no_jitter(0, 60000ms), 1);
    CHECK(by_age.after_failure(errc::ack_timeout, 9, t0, t0 + 59s) == hl7::detail::retry_decision::retry_after(8s));
    CHECK(by_age.after_failure(errc::ack_timeout, 9, t0, t0 + 60s) == hl7::detail::retry_decision::give_up());
}

// --- the lane --------------------------------------------------------------------------------

TEST_CASE("a lane marks each message written, sends it once the mark is stored, and records its ACK with the next mark")
{
    harness h;
    CHECK(h.begin({rec(1), rec(2)}) == std::vector{action::record({lane_change::mark_written(1, t0, false)})});
    h.core.recorded({}, h.now);
    CHECK(h.drain() == std::vector{written_note(1, 1), action::send(1)});
    CHECK(h.core.record(1).message == message_bytes(1));
    h.core.sent(1, {}, make_ack(1), h.now);
    // The outcome of the first and the mark of the second share one transaction.
    CHECK(h.drain() == std::vector{action::record({acknowledged(1, t0), lane_change::mark_written(2, t0, false)})});
    h.core.recorded({}, h.now);
    CHECK(h.drain() == std::vector{outcome_note(1, outbox_state::acknowledged, 1), written_note(2, 1), action::send(2)});
    h.core.sent(2, {}, make_ack(2, "CA"), h.now);
    CHECK(h.drain() == std::vector{action::record({acknowledged(2, t0, "CA")})});
    h.core.recorded({}, h.now);
    CHECK(h.drain() == std::vector{outcome_note(2, outbox_state::acknowledged, 1), action::fetch(32)});
    h.core.fetched({}, {}, h.now);
    CHECK(h.drain() == std::vector{action::drained()});
}

TEST_CASE("a lane with nothing pending reports drained, and busy again when a wake finds a message")
{
    harness h;
    CHECK(h.begin({}) == std::vector{action::drained()});
    h.core.wake(h.now);
    CHECK(h.drain() == std::vector{action::fetch(32)});
    h.core.fetched({}, {rec(5)}, h.now);
    CHECK(h.drain() == std::vector{action::busy(), action::record({lane_change::mark_written(5, t0, false)})});
}

TEST_CASE("a wake during a fetch that found nothing makes the lane look again, as the message may have been missed")
{
    harness h;
    h.core.start(h.now);
    h.drain();
    h.core.claimed({}, h.now);
    h.drain();
    h.core.wake(h.now);
    CHECK(h.drain().empty());
    h.core.fetched({}, {}, h.now);
    CHECK(h.drain() == std::vector{action::fetch(32)});
}

TEST_CASE("a message fetched in the written state is sent again flagged as a possible duplicate")
{
    harness h;
    CHECK(h.begin({rec(1, outbox_state::written, 1)}) == std::vector{action::record({lane_change::mark_written(1, t0, true)})});
    h.core.recorded({}, h.now);
    CHECK(h.drain() == std::vector{written_note(1, 2, true), action::send(1)});
    h.core.sent(1, {}, make_ack(1), h.now);
    h.drain();
    h.core.recorded({}, h.now);
    CHECK(h.drain() == std::vector{outcome_note(1, outbox_state::acknowledged, 2, true), action::fetch(32)});
}

TEST_CASE("an ACK timeout leaves the message written, holds the lane for the backoff and flags the resend")
{
    harness h;
    h.begin({rec(1), rec(2)});
    h.core.recorded({}, h.now);
    h.drain();
    h.core.sent(1, errc::ack_timeout, {}, h.now);
    CHECK(h.drain() == std::vector{retry_note(1, outbox_state::written, 1, errc::ack_timeout, 1s),
                                   action::arm_timer(t0 + 1s)});
    h.now = t0 + 1s;
    h.core.timer_fired(h.now);
    CHECK(h.drain() == std::vector{action::record({lane_change::mark_written(1, t0 + 1s, true)}),
                                   action::arm_timer(t0 + 10s)});
    h.core.recorded({}, h.now);
    CHECK(h.drain() == std::vector{written_note(1, 2, true), action::send(1)});
    h.core.sent(1, errc::connection_lost, {}, h.now);
    CHECK(h.drain() == std::vector{retry_note(1, outbox_state::written, 2, errc::connection_lost, 2s, true),
                                   action::arm_timer(t0 + 3s)});
}

TEST_CASE("a failure before the message was written puts it back to queued, unflagged, and retries it after the backoff")
{
    harness h;
    h.begin({rec(1)});
    h.core.recorded({}, h.now);
    h.drain();
    h.core.sent(1, errc::not_connected, {}, h.now);
    const std::string why = make_error_code(errc::not_connected).message();
    CHECK(h.drain() == std::vector{retry_note(1, outbox_state::queued, 1, errc::not_connected, 1s),
                                   action::record({lane_change::requeue(1, false, why)})});
    h.core.recorded({}, h.now);
    CHECK(h.drain() == std::vector{action::arm_timer(t0 + 1s)});
    h.now = t0 + 1s;
    h.core.timer_fired(h.now);
    CHECK(h.drain() == std::vector{action::record({lane_change::mark_written(1, t0 + 1s, false)}),
                                   action::arm_timer(t0 + 10s)});
}

TEST_CASE("a NACK is final: the message is recorded rejected with the peer's text and the next one goes")
{
    harness h;
    h.begin({rec(1), rec(2)});
    h.core.recorded({}, h.now);
    h.drain();
    const hl7::ack nack = make_ack(1, "AE", "unknown patient");
    h.core.sent(1, {}, nack, h.now);
    CHECK(h.drain() ==
          std::vector{action::record({lane_change::finish(1, t0, outbox_state::rejected, "unknown patient", hl7::ack_code::AE,
                                                          std::string(nack.message().str()), 1500us),
                                      lane_change::mark_written(2, t0, false)})});
    h.core.recorded({}, h.now);
    CHECK(h.drain() == std::vector{outcome_note(1, outbox_state::rejected, 1), written_note(2, 1), action::send(2)});
}

TEST_CASE("a NACK without text is recorded with the meaning of its code")
{
    harness h;
    h.begin({rec(1)});
    h.core.recorded({}, h.now);
    h.drain();
    const hl7::ack nack = make_ack(1, "AR");
    h.core.sent(1, {}, nack, h.now);
    const auto acts = h.drain();
    REQUIRE(acts.size() == 1);
    REQUIRE(acts[0].changes.size() == 1);
    CHECK(acts[0].changes[0].error == make_error_code(hl7::ack_errc::application_reject).message());
}

TEST_CASE("a message that cannot be sent is recorded failed at once, and the lane goes on")
{
    harness h;
    h.begin({rec(1), rec(2)});
    h.core.recorded({}, h.now);
    h.drain();
    h.core.sent(1, errc::block_byte_in_message, {}, h.now);
    CHECK(h.drain() == std::vector{action::record(
                           {lane_change::finish(1, t0, outbox_state::failed,
                                                make_error_code(errc::block_byte_in_message).message()),
                            lane_change::mark_written(2, t0, false)})});
}

TEST_CASE("after max_attempts a failing message becomes a dead letter naming the attempts, and the lane goes on")
{
    harness h(settings(1, no_jitter(2)));
    h.begin({rec(1), rec(2)});
    h.core.recorded({}, h.now);
    h.drain();
    h.core.sent(1, errc::ack_timeout, {}, h.now);
    h.drain();
    h.now += 1s;
    h.core.timer_fired(h.now);
    h.drain();
    h.core.recorded({}, h.now);
    h.drain();
    h.core.sent(1, errc::ack_timeout, {}, h.now);
    const std::string why = make_error_code(errc::ack_timeout).message() + " (gave up after 2 attempts)";
    CHECK(h.drain() == std::vector{action::record({lane_change::finish(1, h.now, outbox_state::failed, why),
                                                   lane_change::mark_written(2, h.now, false)})});
    h.core.recorded({}, h.now);
    CHECK(h.drain() == std::vector{outcome_note(1, outbox_state::failed, 2, true), written_note(2, 1), action::send(2)});
}

TEST_CASE("max_age makes a message queued too long a dead letter at its next failure")
{
    harness h(settings(1, no_jitter(0, 30000ms)));
    h.now = t0 + 31s;
    h.begin({rec(1)});
    h.core.recorded({}, h.now);
    h.drain();
    h.core.sent(1, errc::not_connected, {}, h.now);
    const auto acts = h.drain();
    REQUIRE(acts.size() == 1);
    REQUIRE(acts[0].changes.size() == 1);
    CHECK(acts[0].changes[0].state == outbox_state::failed);
}

TEST_CASE("stop withdraws a send still queued, puts its message back to queued uncounted, then stops")
{
    harness h;
    h.begin({rec(1), rec(2)});
    h.core.recorded({}, h.now);
    h.drain();
    h.core.stop(h.now);
    CHECK(h.drain() == std::vector{action::cancel(1)});
    h.core.sent(1, boost::asio::error::operation_aborted, {}, h.now);
    CHECK(h.drain() == std::vector{action::record({lane_change::requeue(1, true)})});
    h.core.recorded({}, h.now);
    CHECK(h.drain() == std::vector{action::arm_timer(time_point::max()), action::stopped()});
    CHECK(h.core.record(1).attempts == 0);
    h.core.wake(h.now);
    CHECK(h.drain().empty());
}

TEST_CASE("stop while a message is written waits for its ACK and records it before stopping")
{
    harness h;
    h.begin({rec(1), rec(2)});
    h.core.recorded({}, h.now);
    h.drain();
    h.core.stop(h.now);
    CHECK(h.drain() == std::vector{action::cancel(1)}); // ignored by the connection: already written
    h.core.sent(1, {}, make_ack(1), h.now);
    CHECK(h.drain() == std::vector{action::record({acknowledged(1, t0)})});
    h.core.recorded({}, h.now);
    CHECK(h.drain() == std::vector{outcome_note(1, outbox_state::acknowledged, 1), action::arm_timer(time_point::max()),
                                   action::stopped()});
}

TEST_CASE("stop while a mark is being stored does not send the message: it goes back to queued")
{
    harness h;
    h.begin({rec(1)});
    h.core.stop(h.now);
    CHECK(h.drain().empty());
    h.core.recorded({}, h.now);
    CHECK(h.drain() == std::vector{action::record({lane_change::requeue(1, true)})});
    h.core.recorded({}, h.now);
    CHECK(h.drain() == std::vector{action::arm_timer(time_point::max()), action::stopped()});
}

TEST_CASE("stop before the lane started stops it at once")
{
    harness h;
    h.core.stop(h.now);
    CHECK(h.drain() == std::vector{action::stopped()});
}

TEST_CASE("a failed first claim stops the lane with its error and nothing else")
{
    harness h;
    h.core.start(h.now);
    h.drain();
    h.core.claimed(outbox_errc::delivery_locked, h.now);
    CHECK(h.drain() == std::vector{action::stopped(outbox_errc::delivery_locked)});
}

TEST_CASE("a store that fails to record a mark stops the lane with its error, and the message is not sent")
{
    harness h;
    h.begin({rec(1)});
    h.core.recorded(outbox_errc::store_full, h.now);
    CHECK(h.drain() == std::vector{action::arm_timer(time_point::max()), action::stopped(outbox_errc::store_full)});
}

TEST_CASE("a lost lease while a message is written withdraws nothing more and stops after its send completes, writing nothing")
{
    harness h;
    h.begin({rec(1), rec(2)});
    h.core.recorded({}, h.now);
    h.drain();
    h.core.timer_fired(t0 + 10s); // renewal
    CHECK(h.drain() == std::vector{action::claim()});
    h.core.claimed(outbox_errc::lease_lost, t0 + 10s);
    CHECK(h.drain() == std::vector{action::cancel(1)});
    h.core.sent(1, {}, make_ack(1), t0 + 10s);
    CHECK(h.drain() == std::vector{action::stopped(outbox_errc::lease_lost)});
}

TEST_CASE("the lease is renewed every renew_every while the lane works")
{
    harness h;
    h.begin({});
    h.core.timer_fired(t0 + 10s);
    CHECK(h.drain() == std::vector{action::claim()});
    h.core.claimed({}, t0 + 10s);
    CHECK(h.drain() == std::vector{action::arm_timer(t0 + 20s)});
}

TEST_CASE("with a window of two, a failure withdraws the later send and the lane resumes from the earliest message")
{
    harness h(settings(2));
    CHECK(h.begin({rec(1), rec(2), rec(3)}) ==
          std::vector{action::record({lane_change::mark_written(1, t0, false), lane_change::mark_written(2, t0, false)})});
    h.core.recorded({}, h.now);
    CHECK(h.drain() == std::vector{written_note(1, 1), action::send(1), written_note(2, 1), action::send(2)});
    h.core.sent(1, errc::connection_lost, {}, h.now);
    CHECK(h.drain() == std::vector{retry_note(1, outbox_state::written, 1, errc::connection_lost, 1s), action::cancel(2),
                                   action::arm_timer(t0 + 1s)});
    h.core.sent(2, boost::asio::error::operation_aborted, {}, h.now);
    CHECK(h.drain() == std::vector{action::record({lane_change::requeue(2, true)})});
    h.core.recorded({}, h.now);
    CHECK(h.drain().empty());
    h.now = t0 + 1s;
    h.core.timer_fired(h.now);
    CHECK(h.drain() == std::vector{action::record({lane_change::mark_written(1, h.now, true),
                                                   lane_change::mark_written(2, h.now, false)}),
                                   action::arm_timer(t0 + 10s)});
}

TEST_CASE("with a window of two, a later send that succeeds while the first is retried is recorded, and not sent again")
{
    harness h(settings(2));
    h.begin({rec(1), rec(2), rec(3)});
    h.core.recorded({}, h.now);
    h.drain();
    h.core.sent(1, errc::ack_timeout, {}, h.now);
    h.drain();
    h.core.sent(2, {}, make_ack(2), h.now);
    CHECK(h.drain() == std::vector{action::record({acknowledged(2, t0)})});
    h.core.recorded({}, h.now);
    CHECK(h.drain() == std::vector{outcome_note(2, outbox_state::acknowledged, 1)});
    h.now = t0 + 1s;
    h.core.timer_fired(h.now);
    CHECK(h.drain() == std::vector{action::record({lane_change::mark_written(1, h.now, true),
                                                   lane_change::mark_written(3, h.now, false)}),
                                   action::arm_timer(t0 + 10s)});
}

// --- a simulated store and peer --------------------------------------------------------------

namespace {

// What the SQLite store does with a lane's changes, in memory.
struct fake_store {
    std::map<std::int64_t, hl7::outbox_record> rows;
    std::uint64_t next_outcome = 1;

    std::vector<hl7::outbox_record> pending(std::size_t limit) const
    {
        std::vector<hl7::outbox_record> out;
        for (const auto& [id, r] : rows)
            if (!hl7::is_final(r.state) && out.size() < limit)
                out.push_back(r);
        return out;
    }

    void apply(const std::vector<lane_change>& changes)
    {
        for (const lane_change& c : changes) {
            auto& r = rows.at(c.id);
            REQUIRE(!hl7::is_final(r.state));
            switch (c.what) {
            case lane_change::kind::written:
                r.state = outbox_state::written;
                ++r.attempts;
                r.possible_duplicate = r.possible_duplicate || c.possible_duplicate;
                break;
            case lane_change::kind::requeued:
                r.state = outbox_state::queued;
                if (c.uncount && r.attempts > 0)
                    --r.attempts;
                break;
            case lane_change::kind::finished:
                r.state = c.state;
                r.outcome = next_outcome++;
                break;
            }
        }
    }
};

// Steps a lane against the fake store and a peer, answering each action in order (a queue of
// answers, taken first in, first out), with failures and crashes drawn from a seeded generator.
struct world {
    struct answer {
        kind what;
        std::int64_t id = 0;
        std::vector<lane_change> changes = {};
    };

    fake_store store;
    std::vector<std::int64_t> received; // ids at the peer, in the order they arrived
    std::mt19937 rng;
    time_point now = t0;
    bool fail_sends = true;

    explicit world(unsigned seed, std::int64_t messages) : rng(seed)
    {
        for (std::int64_t id = 1; id <= messages; ++id)
            store.rows.emplace(id, rec(id));
    }

    bool chance(double p) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; }

    // Runs one life of a lane until it stops (or crashes after `crash_after` answers; 0: never).
    // Checks, at every send, that the store had the message written.
    void run_lane(std::size_t crash_after)
    {
        lane_core core(settings(1, no_jitter()));
        std::deque<answer> answers;
        std::set<std::int64_t> in_flight;
        auto take = [&] {
            action a;
            while (core.next(a)) {
                switch (a.what) {
                case kind::claim:
                case kind::fetch: answers.push_back({a.what}); break;
                case kind::record: answers.push_back({a.what, 0, std::move(a.changes)}); break;
                case kind::send:
                    REQUIRE(store.rows.at(a.id).state == outbox_state::written);
                    REQUIRE(in_flight.empty()); // a window of one
                    in_flight.insert(a.id);
                    answers.push_back({a.what, a.id});
                    break;
                default: break;
                }
            }
        };
        core.start(now);
        take();
        std::size_t answered = 0;
        bool stopping = false;
        while (!answers.empty()) {
            if (crash_after != 0 && answered == crash_after) {
                // The process dies: a message on the wire may or may not have arrived.
                for (std::int64_t id : in_flight)
                    if (chance(0.5))
                        received.push_back(id);
                return;
            }
            ++answered;
            answer x = std::move(answers.front());
            answers.pop_front();
            now += 10ms;
            switch (x.what) {
            case kind::claim: core.claimed({}, now); break;
            case kind::fetch: core.fetched({}, store.pending(32), now); break;
            case kind::record:
                store.apply(x.changes);
                core.recorded({}, now);
                break;
            case kind::send: {
                in_flight.erase(x.id);
                const double roll = std::uniform_real_distribution<double>(0, 1)(rng);
                if (!fail_sends || roll < 0.7) {
                    received.push_back(x.id);
                    core.sent(x.id, {}, make_ack(x.id), now);
                } else if (roll < 0.8) {
                    core.sent(x.id, errc::not_connected, {}, now); // never written
                } else if (roll < 0.9) {
                    received.push_back(x.id); // arrived, its ACK did not
                    core.sent(x.id, errc::ack_timeout, {}, now);
                } else {
                    core.sent(x.id, errc::connection_lost, {}, now); // lost on the way
                }
                break;
            }
            default: break;
            }
            take();
            if (answers.empty() && !stopping) {
                // Waiting for a retry, or drained: let the clock reach the timer.
                if (std::all_of(store.rows.begin(), store.rows.end(),
                                [](const auto& r) { return hl7::is_final(r.second.state); })) {
                    stopping = true;
                    core.stop(now);
                } else {
                    now += 10s;
                    core.timer_fired(now);
                }
                take();
            }
        }
    }
};

} // namespace

TEST_CASE("random runs with failed sends and crashes lose nothing, flag every duplicate and keep the lane's order")
{
    std::size_t duplicates = 0, resends = 0; // so that the checks below are not vacuous
    for (unsigned seed = 1; seed <= 200; ++seed) {
        CAPTURE(seed);
        world w(seed, 12);
        for (int life = 0; life < 4; ++life)
            w.run_lane(std::uniform_int_distribution<std::size_t>(1, 60)(w.rng));
        w.fail_sends = false;
        w.run_lane(0);
        std::map<std::int64_t, int> times;
        std::vector<std::int64_t> first;
        for (std::int64_t id : w.received)
            if (times[id]++ == 0)
                first.push_back(id);
        for (const auto& [id, r] : w.store.rows) {
            const auto id_seen = id;
            CAPTURE(id_seen);
            CHECK(r.state == outbox_state::acknowledged);
            CHECK(times[id] >= 1);
            if (times[id] > 1)
                CHECK(r.possible_duplicate);
            duplicates += times[id] > 1;
            resends += r.attempts > 1;
        }
        CHECK(std::is_sorted(first.begin(), first.end()));
    }
    CHECK(duplicates > 100);
    CHECK(resends > duplicates);
}

namespace {

// One life of a lane delivering three messages from `store`, every send acknowledged, the
// `fail_at`-th answer of the store (claim, fetch or record; 0: none) failing.
struct scripted_life {
    std::size_t store_answers = 0;
    std::vector<std::int64_t> sent;
    int stops = 0;
    boost::system::error_code stopped_with;
    bool sent_unmarked = false;

    scripted_life(fake_store& store, std::size_t fail_at, time_point now)
    {
        lane_core core(settings());
        std::deque<action> todo;
        auto take = [&] {
            action a;
            while (core.next(a))
                todo.push_back(std::move(a));
        };
        core.start(now);
        take();
        while (!todo.empty()) {
            action a = std::move(todo.front());
            todo.pop_front();
            const bool asks_store = a.what == kind::claim || a.what == kind::fetch || a.what == kind::record;
            const bool inject = asks_store && ++store_answers == fail_at;
            const boost::system::error_code ec =
                inject ? make_error_code(outbox_errc::store_io_error) : boost::system::error_code{};
            switch (a.what) {
            case kind::claim: core.claimed(ec, now); break;
            case kind::fetch: core.fetched(ec, ec ? std::vector<hl7::outbox_record>{} : store.pending(32), now); break;
            case kind::record:
                if (!ec)
                    store.apply(a.changes);
                core.recorded(ec, now);
                break;
            case kind::send:
                sent_unmarked = sent_unmarked || store.rows.at(a.id).state != outbox_state::written;
                sent.push_back(a.id);
                core.sent(a.id, {}, make_ack(a.id), now);
                break;
            case kind::stopped:
                ++stops;
                stopped_with = a.error;
                break;
            default: break;
            }
            take();
        }
    }
};

fake_store three_messages()
{
    fake_store store;
    for (std::int64_t id = 1; id <= 3; ++id)
        store.rows.emplace(id, rec(id));
    return store;
}

} // namespace

TEST_CASE("a store failure injected at every step stops the lane with it, sends nothing unmarked, and the next life finishes")
{
    fake_store clean = three_messages();
    const std::size_t steps = scripted_life(clean, 0, t0).store_answers;
    CHECK(steps == 7); // claim, fetch, four records, the fetch that finds nothing
    for (std::size_t fail_at = 1; fail_at <= steps; ++fail_at) {
        CAPTURE(fail_at);
        fake_store store = three_messages();
        const scripted_life first(store, fail_at, t0);
        CHECK(first.stops == 1);
        CHECK(first.stopped_with == outbox_errc::store_io_error);
        CHECK_FALSE(first.sent_unmarked);
        // A message sent but not recorded final is still written: the next life sends it
        // again flagged, and delivers the rest.
        for (const auto& [id, r] : store.rows)
            if (!hl7::is_final(r.state))
                CHECK((r.state == outbox_state::written) == (std::count(first.sent.begin(), first.sent.end(), id) > 0));
        std::set<std::int64_t> written_before;
        for (const auto& [id, r] : store.rows)
            if (r.state == outbox_state::written)
                written_before.insert(id);
        const scripted_life second(store, 0, t0 + 1s);
        CHECK(second.stops == 0);
        CHECK_FALSE(second.sent_unmarked);
        for (const auto& [id, r] : store.rows) {
            const auto id_seen = id;
            CAPTURE(id_seen);
            CHECK(r.state == outbox_state::acknowledged);
            CHECK(r.possible_duplicate == (written_before.count(id) > 0));
        }
    }
}

TEST_CASE("a message recorded written after the lease's TTL has passed is not sent: the lane stops with lease_lost")
{
    auto s = settings();
    s.lease_ttl = 30s;
    harness h(s);
    h.begin({rec(1)});
    // Paused past the lease (counted from when the claim was asked for) before the mark came back.
    h.core.recorded({}, t0 + 30s);
    CHECK(h.drain() == std::vector{action::arm_timer(time_point::max()), action::stopped(outbox_errc::lease_lost)});
}

TEST_CASE("a renewal restarts the lease's TTL from when it was asked for")
{
    auto s = settings();
    s.lease_ttl = 30s;
    harness h(s);
    h.begin({rec(1)});
    h.core.timer_fired(t0 + 10s);
    auto actions = h.drain();
    REQUIRE(!actions.empty());
    CHECK(actions.front() == action::claim());
    h.core.claimed({}, t0 + 12s);
    h.drain();
    h.core.recorded({}, t0 + 35s); // before t0 + 10s + 30s
    actions = h.drain();
    CHECK(std::find(actions.begin(), actions.end(), action::send(1)) != actions.end());
}
