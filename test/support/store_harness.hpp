// The outbox stores' tests share this: a store on an io_context of its own, whose every call
// waits (at most 10 s) for its completion, which must come exactly once, and the messages
// they enqueue.
#pragma once

#include "outbox/store.hpp"

#include <boost/asio/io_context.hpp>

#include <doctest/doctest.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace hl7::test {

inline const outbox_clock::time_point store_t0 = outbox_clock::time_point(std::chrono::milliseconds(1'700'000'000'000));
inline const std::string store_destination = "127.0.0.1:2575";

/// An ADT^A01 whose MSH-10 and PID-3 are `id`, with `padding` bytes more in an NTE.
inline std::string store_bytes(const std::string& id, std::size_t padding = 0)
{
    return "MSH|^~\\&|SND|F|RCV|F|20240101||ADT^A01|" + id + "|P|2.5.1\rPID|1||" + id + "\rNTE|1||" +
           std::string(padding, 'x') + "\r";
}

inline detail::new_message store_message(const std::string& id, std::uint32_t lane = 0,
                                         std::string destination = store_destination)
{
    return {.destination = std::move(destination), .lane = lane, .control_id = id, .bytes = store_bytes(id), .at = store_t0};
}

struct store_harness {
    using error_code = boost::system::error_code;
    using opener = std::function<outcome::result<std::unique_ptr<detail::store>>(boost::asio::any_io_executor)>;

    explicit store_harness(const opener& open)
    {
        auto s = open(ctx.get_executor());
        if (s)
            store = std::move(s).value();
        else
            open_error = s.error();
    }
    ~store_harness()
    {
        if (store) {
            bool closed = false;
            store->close([&] { closed = true; });
            ctx.restart();
            ctx.run_for(std::chrono::seconds(10));
            CHECK(closed);
        }
    }
    store_harness(const store_harness&) = delete;
    store_harness& operator=(const store_harness&) = delete;

    /// Starts `op` with a handler that records its arguments and runs until it completed; a
    /// second completion ready by then fails the test too.
    template <class... Results, class Op>
    std::tuple<error_code, Results...> call(Op op)
    {
        std::optional<std::tuple<error_code, Results...>> got;
        int completions = 0;
        op([&](error_code ec, Results... r) {
            ++completions;
            got.emplace(ec, std::move(r)...);
        });
        ctx.restart();
        while (completions == 0 && ctx.run_one_for(std::chrono::seconds(10)) > 0) {
        }
        ctx.poll();
        REQUIRE_MESSAGE(completions == 1, "the operation completed " << completions << " times");
        return std::move(*got);
    }

    enqueue_result enqueue(detail::new_message m, error_code expected = {})
    {
        auto [ec, r] = call<enqueue_result>([&](auto h) { store->enqueue(std::move(m), std::move(h)); });
        CHECK(ec == expected);
        return r;
    }

    std::vector<outbox_record> select(detail::record_query q)
    {
        auto [ec, v] = call<std::vector<outbox_record>>([&](auto h) { store->select(std::move(q), std::move(h)); });
        CHECK(!ec);
        return v;
    }

    outbox_record get(std::int64_t id)
    {
        auto v = select({.id = id});
        REQUIRE(v.size() == 1);
        return v.front();
    }

    error_code begin_delivery()
    {
        return std::get<0>(call<>([&](auto h) { store->begin_delivery(std::move(h)); }));
    }

    std::tuple<error_code, detail::lease> claim(std::uint32_t lane, std::string owner,
                                                outbox_clock::duration ttl = std::chrono::seconds(30),
                                                outbox_clock::time_point now = store_t0)
    {
        return call<detail::lease>(
            [&](auto h) { store->claim({store_destination, lane}, std::move(owner), ttl, now, std::move(h)); });
    }

    error_code record(detail::lease l, std::vector<detail::lane_change> changes)
    {
        return std::get<0>(call<>([&](auto h) { store->record(std::move(l), std::move(changes), std::move(h)); }));
    }

    std::size_t heartbeat(std::string owner, outbox_clock::duration ttl)
    {
        auto [ec, n] = call<std::size_t>([&](auto h) { store->heartbeat(std::move(owner), ttl, std::move(h)); });
        CHECK(!ec);
        return n;
    }

    std::vector<outbox_lane_status> status()
    {
        auto [ec, v] = call<std::vector<outbox_lane_status>>([&](auto h) { store->status(std::move(h)); });
        CHECK(!ec);
        return v;
    }

    boost::asio::io_context ctx;
    std::unique_ptr<detail::store> store;
    error_code open_error;
};

/// What record() does, the same on every store, checked on a new, empty one: a lane's
/// changes apply in order; written counts an attempt and flags a possible duplicate, requeued
/// uncounts; finished keeps the ACK, its code, text (not necessarily UTF-8) and round trip,
/// and numbers outcomes for the stream, found by id, by MSH-10 and after an outcome number.
inline void check_changes_in_order(store_harness& f)
{
    using namespace std::chrono_literals;
    using detail::lane_change;
    const auto a = f.enqueue(store_message("R1")).id;
    const auto b = f.enqueue(store_message("R2")).id;
    REQUIRE(!f.begin_delivery());
    auto [ec, l] = f.claim(0, "me");
    REQUIRE(!ec);
    REQUIRE(!f.record(l, {lane_change::mark_written(a, store_t0 + 1s, false)}));
    CHECK(f.get(a).attempts == 1);
    CHECK(f.get(a).written_at == store_t0 + 1s);
    REQUIRE(!f.record(l, {lane_change::requeue(a, true, "withdrawn")}));
    CHECK(f.get(a).attempts == 0);
    CHECK(f.get(a).state == outbox_state::queued);
    CHECK(f.get(a).error == "withdrawn");
    REQUIRE(!f.record(l, {lane_change::mark_written(a, store_t0 + 2s, false), lane_change::mark_written(a, store_t0 + 3s, true)}));
    CHECK(f.get(a).possible_duplicate);
    CHECK(f.get(a).attempts == 2);
    REQUIRE(!f.record(l, {lane_change::finish(a, store_t0 + 4s, outbox_state::rejected, "no such patient \xe9", hl7::ack_code::AE,
                                              "MSH|ack", 1500us),
                          lane_change::mark_written(b, store_t0 + 4s, false)}));
    REQUIRE(!f.record(l, {lane_change::finish(b, store_t0 + 5s, outbox_state::acknowledged, "", hl7::ack_code::AA, "MSH|ack2")}));
    const auto ra = f.get(a);
    CHECK(ra.state == outbox_state::rejected);
    CHECK(ra.code == hl7::ack_code::AE);
    CHECK(ra.ack == "MSH|ack");
    CHECK(ra.round_trip == 1500us);
    CHECK(ra.error == "no such patient \xe9");
    CHECK(ra.finished_at == store_t0 + 4s);
    CHECK(ra.outcome == 1);
    const auto rb = f.get(b);
    CHECK(rb.outcome == 2);
    auto [lec, latest] = f.call<std::uint64_t>([&](auto h) { f.store->latest_outcome(std::move(h)); });
    CHECK(!lec);
    CHECK(latest == 2);
    const auto stream = f.select({.after_outcome = 0});
    REQUIRE(stream.size() == 2);
    CHECK(stream[0].id == a);
    CHECK(stream[1].id == b);
    CHECK(f.select({.after_outcome = 1}).front().id == b);
    CHECK(f.select({.destination = store_destination, .control_id = "R2"}).front().id == b);
    CHECK(f.select({.lane = 0, .states = {outbox_state::queued, outbox_state::written}}).empty());
}

} // namespace hl7::test
