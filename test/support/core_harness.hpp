// Steps a connection_core with a made-up clock and records what it asks for: the tests of
// the core and of its window share it. Its oracle sees absence: a send that never completed,
// or completed twice, fails the test.
#pragma once

#include "core/connection_core.hpp"

#include <hl7/model/ack.hpp>
#include <hl7/model/mllp.hpp>

#include <doctest/doctest.h>

#include <boost/asio/error.hpp>

#include <algorithm>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace doctest {
template <>
struct StringMaker<std::vector<hl7::detail::action>> {
    static String convert(const std::vector<hl7::detail::action>& actions)
    {
        std::ostringstream out;
        out << "{";
        for (const auto& a : actions)
            out << "\n    " << a;
        out << "\n}";
        return out.str().c_str();
    }
};
} // namespace doctest

namespace hl7::test {

using core_clock = hl7::detail::clock;
using action = hl7::detail::action;
using event = hl7::detail::owned_event;
using kind = action::kind;
using namespace std::chrono_literals;

/// The payload of an ACK whose MSA-2 is `control_id`.
inline std::string ack_payload(std::string_view control_id, std::string_view code = "AA")
{
    return "MSH|^~\\&|RCV|F|SND|F|20240101||ACK^A01^ACK|A" + std::string(control_id) + "|P|2.5.1\rMSA|" +
           std::string(code) + "|" + std::string(control_id) + "\r";
}

/// That ACK, framed.
inline std::string ack_frame(std::string_view control_id, std::string_view code = "AA")
{
    return hl7::mllp::encode(ack_payload(control_id, code));
}

/// The ACK a send completes with when answered by ack_frame(control_id, code) after `rt`.
inline hl7::ack expected_ack(std::string_view control_id, std::string_view code = "AA",
                             std::chrono::microseconds rt = {})
{
    return hl7::ack::read(hl7::message::parse(ack_payload(control_id, code)).value(), rt).value();
}

struct harness {
    explicit harness(hl7::connection_options o = defaults())
        : options(std::move(o)), core(options, counters, status, 1)
    {
    }

    /// No jitter, an observer (so that events are actions too).
    static hl7::connection_options defaults()
    {
        hl7::connection_options o;
        o.reconnect.jitter = 0;
        o.observer = [](const hl7::connection_event&) {};
        return o;
    }
    /// As defaults(), without an observer: sequences of actions without the events.
    static hl7::connection_options quiet()
    {
        auto o = defaults();
        o.observer = nullptr;
        return o;
    }
    /// As defaults(), with a window of `n`.
    static hl7::connection_options window(std::size_t n, bool observed = true)
    {
        auto o = observed ? defaults() : quiet();
        o.max_in_flight = n;
        return o;
    }

    // Every action the core has for us, in order. A send completed twice fails the test here.
    std::vector<action> drain()
    {
        std::vector<action> out;
        action a;
        while (core.next(a))
            out.push_back(std::move(a));
        for (const action& x : out) {
            switch (x.what()) {
            case kind::connect: link = x.link(); break;
            case kind::complete:
                completions[x.id()].push_back(x);
                CHECK_MESSAGE(completions[x.id()].size() == 1, "send " << x.id() << " completed twice");
                break;
            case kind::write: written.push_back(x.id()); break;
            case kind::notify: events.push_back(x.event()); break;
            case kind::arm_timer: timer = x.deadline(); break;
            default: break;
            }
        }
        return out;
    }

    // --- the oracle -------------------------------------------------------------------------
    /// How often send `id` completed.
    std::size_t times(std::uint64_t id) const
    {
        const auto it = completions.find(id);
        return it == completions.end() ? 0 : it->second.size();
    }
    /// The error send `id` completed with; it must have completed exactly once.
    boost::system::error_code error_of(std::uint64_t id) const
    {
        REQUIRE_MESSAGE(times(id) == 1, "send " << id << " completed " << times(id) << " times");
        return completions.at(id).front().error();
    }
    /// Whether send `id` completed once, with an ACK.
    bool succeeded(std::uint64_t id) const { return !error_of(id); }
    /// The ACK send `id` completed with; it must have succeeded, once.
    const hl7::ack& ack_of(std::uint64_t id) const
    {
        REQUIRE(succeeded(id));
        return completions.at(id).front().ack();
    }
    /// Every send in [first, last] completed exactly once.
    void check_all_completed(std::uint64_t first, std::uint64_t last) const
    {
        for (std::uint64_t id = first; id <= last; ++id)
            CHECK_MESSAGE(times(id) == 1, "send " << id << " completed " << times(id) << " times");
    }
    /// Each completion was counted once, in exactly one counter.
    void check_counted() const
    {
        std::uint64_t total = 0;
        for (const auto& [id, c] : completions)
            total += c.size();
        CHECK(counters.acknowledged + counters.rejected + counters.timed_out + counters.failed == total);
    }

    // --- steps ------------------------------------------------------------------------------
    void advance(core_clock::duration d)
    {
        now += d;
        core.timer_fired(now);
    }

    // Lets time pass until the timer makes something happen: it may fire early (it is armed
    // lazily) and only arm itself again. Returns the actions of the last firing.
    std::vector<action> fire()
    {
        for (;;) {
            auto acts = tick();
            const bool only_rearmed = !acts.empty() && std::all_of(acts.begin(), acts.end(), [](const action& a) {
                return a.what() == kind::arm_timer;
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
        timer = core_clock::time_point::max();
        core.timer_fired(now);
        return drain();
    }

    void connect_ok() { core.connected(link, {}, now); }

    // The control id of send `id`.
    // (Not "C" + std::to_string(id): GCC 12 warns falsely about it, -Wrestrict.)
    static std::string cid(std::uint64_t id)
    {
        std::string s = std::to_string(id);
        s.insert(s.begin(), 'C');
        return s;
    }

    void send(std::uint64_t id) { core.send(id, cid(id), now); }
    void wrote() { core.written(link, {}, now); }
    void ack(std::uint64_t id, std::string_view code = "AA") { core.received(link, ack_frame(cid(id), code), now); }

    static bool has(const std::vector<action>& acts, kind k)
    {
        return std::any_of(acts.begin(), acts.end(), [k](const action& a) { return a.what() == k; });
    }

    std::size_t count_events(hl7::connection_event::kind k) const
    {
        return static_cast<std::size_t>(
            std::count_if(events.begin(), events.end(), [k](const event& e) { return e.what == k; }));
    }

    hl7::connection_options options;
    hl7::detail::counter_block counters;
    hl7::detail::status_block status;
    hl7::detail::connection_core core;
    core_clock::time_point now = core_clock::time_point{} + 1h;
    std::uint64_t link = 0;
    core_clock::time_point timer = core_clock::time_point::max();
    std::map<std::uint64_t, std::vector<action>> completions;
    std::vector<std::uint64_t> written;
    std::vector<event> events;
};

/// `h`, connected.
inline harness& up(harness& h)
{
    h.core.start(h.now);
    h.drain();
    h.connect_ok();
    h.drain();
    return h;
}

} // namespace hl7::test
