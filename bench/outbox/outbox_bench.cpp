// The outbox: durable enqueues by 1 and 16 concurrent producers beside plain SQLite (one
// INSERT and COMMIT per message, and one big transaction) on the same disk with the same
// synchronous mode; delivery through the outbox beside the same messages sent directly over
// one connection. Each benchmark checks what it stored or delivered.
#include <hl7/net/client.hpp>
#include <hl7/net/server.hpp>
#include <hl7/outbox/outbox.hpp>

#include "support/util.hpp"

#include <benchmark/benchmark.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <sqlite3.h>

#include <atomic>
#include <filesystem>
#include <functional>
#include <thread>

#include <stdlib.h>

namespace asio = boost::asio;
namespace fs = std::filesystem;
using error_code = boost::system::error_code;

namespace {

// A fresh directory under $TMPDIR (or /tmp), removed with its contents.
struct scratch {
    scratch()
    {
        const char* tmp = std::getenv("TMPDIR");
        std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/hl7-outbox-bench-XXXXXX";
        if (::mkdtemp(pattern.data()) == nullptr)
            throw std::runtime_error("cannot make a temporary directory");
        dir = pattern;
    }
    ~scratch()
    {
        std::error_code ignored;
        fs::remove_all(dir, ignored);
    }
    std::string file(const std::string& name) const { return (dir / name).string(); }
    fs::path dir;
};

const hl7::message& sample()
{
    static const hl7::message m = hl7::message::parse(hl7::test::read_sample("adt_a01.hl7")).value();
    return m;
}

// The sample with MSH-10 `n` (and PID-3 spread over 64 patients, for lanes).
hl7::message numbered(std::uint64_t n)
{
    hl7::message m = sample();
    (void)m.set("MSH.10", hl7::test::label("B", n));
    (void)m.set("PID.3.1", hl7::test::label("PAT", n % 64));
    return m;
}

void report_rate(benchmark::State& state, double per_iteration)
{
    state.counters["messages/s"] =
        benchmark::Counter(static_cast<double>(state.iterations()) * per_iteration, benchmark::Counter::kIsRate);
}

hl7::outbox open(asio::io_context& ctx, const std::string& path, hl7::outbox_synchronous sync)
{
    return hl7::outbox::open(ctx.get_executor(), {.location = path, .synchronous = sync}).value();
}

std::uint64_t count_in(hl7::outbox& box, asio::io_context& ctx, hl7::outbox_state state)
{
    std::uint64_t n = 0;
    box.async_status([&](error_code ec, std::vector<hl7::outbox_lane_status> lanes) {
        for (const auto& l : lanes)
            n += ec ? 0
                    : (state == hl7::outbox_state::queued         ? l.queued
                       : state == hl7::outbox_state::acknowledged ? l.acknowledged
                                                                  : 0);
    });
    ctx.restart();
    ctx.run();
    return n;
}

const hl7::outbox_destination nowhere{.host = "127.0.0.1", .port = 2575};

// Durable enqueues: `producers` of them each enqueue one message and, once it is committed,
// the next, `per_iteration` messages in all per iteration.
void enqueue(benchmark::State& state, int producers, int per_iteration)
{
    scratch s;
    asio::io_context ctx;
    auto box = open(ctx, s.file("outbox.db"), hl7::outbox_synchronous::full);
    std::uint64_t next_id = 0;
    bool wrong = false;
    for (auto _ : state) {
        int remaining = per_iteration;
        std::function<void()> produce = [&] {
            if (remaining == 0)
                return;
            --remaining;
            box.async_enqueue(nowhere, numbered(++next_id), {}, [&](error_code ec, hl7::enqueue_result r) {
                wrong = wrong || ec || r.duplicate;
                produce();
            });
        };
        for (int p = 0; p < producers; ++p)
            produce();
        ctx.restart();
        ctx.run();
    }
    if (wrong || count_in(box, ctx, hl7::outbox_state::queued) != next_id)
        state.SkipWithError("an enqueue failed, or the outbox does not hold every message");
    report_rate(state, per_iteration);
    box.async_close([] {});
    ctx.restart();
    ctx.run();
}

// Plain SQLite on the same disk, WAL and synchronous = FULL as the outbox: the same bytes
// inserted into a table, `per_commit` per transaction.
void sqlite_baseline(benchmark::State& state, int per_commit)
{
    scratch s;
    sqlite3* db = nullptr;
    sqlite3_open(s.file("plain.db").c_str(), &db);
    sqlite3_exec(db, "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;"
                     "CREATE TABLE m(id INTEGER PRIMARY KEY, destination TEXT, control_id TEXT, bytes BLOB,"
                     " UNIQUE(destination, control_id))",
                 nullptr, nullptr, nullptr);
    sqlite3_stmt* insert = nullptr;
    sqlite3_prepare_v2(db, "INSERT INTO m(destination, control_id, bytes) VALUES('127.0.0.1:2575', ?1, ?2)", -1, &insert,
                       nullptr);
    std::uint64_t next_id = 0;
    bool wrong = false;
    for (auto _ : state) {
        wrong = wrong || sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) != SQLITE_OK;
        for (int i = 0; i < per_commit; ++i) {
            const hl7::message m = numbered(++next_id);
            sqlite3_bind_text(insert, 1, m.control_id().data(), static_cast<int>(m.control_id().size()), SQLITE_TRANSIENT);
            sqlite3_bind_blob(insert, 2, m.str().data(), static_cast<int>(m.str().size()), SQLITE_TRANSIENT);
            wrong = wrong || sqlite3_step(insert) != SQLITE_DONE;
            sqlite3_reset(insert);
        }
        wrong = wrong || sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr) != SQLITE_OK;
    }
    sqlite3_stmt* count = nullptr;
    sqlite3_prepare_v2(db, "SELECT count(*) FROM m", -1, &count, nullptr);
    wrong = wrong || sqlite3_step(count) != SQLITE_ROW || static_cast<std::uint64_t>(sqlite3_column_int64(count, 0)) != next_id;
    sqlite3_finalize(count);
    sqlite3_finalize(insert);
    sqlite3_close(db);
    if (wrong)
        state.SkipWithError("an insert failed, or the table does not hold every message");
    report_rate(state, per_commit);
}

// The library's server on its own io_context and thread, counting what it receives.
struct counting_server {
    counting_server()
        : server(hl7::server::create(ctx.get_executor(), {.host = "127.0.0.1",
                                                          .port = 0,
                                                          .observer = [this](const hl7::server_event& e) {
                                                              if (e.what == hl7::server_event::kind::received)
                                                                  ++received;
                                                          }})
                     .value())
    {
        thread = std::thread([this] { ctx.run(); });
    }
    ~counting_server()
    {
        asio::co_spawn(ctx, server.async_close(asio::use_awaitable), asio::detached);
        ctx.stop();
        thread.join();
    }
    std::uint16_t port() const { return server.local_endpoint().port(); }

    asio::io_context ctx;
    std::atomic<std::uint64_t> received{0};
    hl7::server server;
    std::thread thread;
};

// Delivery through the outbox: `per_iteration` messages stored (not timed), then delivered to
// the library's server by a run until nothing is pending, over `lanes` lanes, each with a
// window of `window` messages in flight.
void deliver(benchmark::State& state, hl7::outbox_synchronous sync, int per_iteration, std::uint32_t lanes,
             std::size_t window = 1)
{
    scratch s;
    counting_server server;
    asio::io_context ctx;
    const hl7::outbox_destination to{.host = "127.0.0.1", .port = server.port()};
    const hl7::enqueue_options spread{.partition_key = lanes > 1 ? "PID.3.1" : "", .lanes = lanes};
    // Stored quickly; delivered under the synchronous mode measured.
    auto filler = open(ctx, s.file("outbox.db"), hl7::outbox_synchronous::normal);
    auto box = open(ctx, s.file("outbox.db"), sync);
    hl7::outbox_run_options until_empty;
    until_empty.until_empty = true;
    until_empty.connection.max_in_flight = window;
    std::uint64_t next_id = 0;
    bool wrong = false;
    for (auto _ : state) {
        state.PauseTiming();
        for (int i = 0; i < per_iteration; ++i)
            filler.async_enqueue(to, numbered(++next_id), spread,
                                 [&](error_code ec, hl7::enqueue_result) { wrong = wrong || ec; });
        ctx.restart();
        ctx.run();
        state.ResumeTiming();
        box.async_run(to, until_empty, [&](error_code ec) { wrong = wrong || ec; });
        ctx.restart();
        ctx.run();
    }
    if (wrong || count_in(box, ctx, hl7::outbox_state::acknowledged) != next_id || server.received != next_id)
        state.SkipWithError("a message was not delivered, or not acknowledged");
    report_rate(state, per_iteration);
    filler.async_close([] {});
    box.async_close([] {});
    ctx.restart();
    ctx.run();
}

// The same messages sent directly over one connection, one at a time, as a lane sends them.
void direct_baseline(benchmark::State& state, int per_iteration)
{
    counting_server server;
    asio::io_context ctx;
    auto client = hl7::client::create(ctx.get_executor(), {.host = "127.0.0.1"}).value();
    auto conn = client.connect(server.port()).value();
    std::uint64_t next_id = 0, acknowledged = 0;
    for (auto _ : state) {
        int remaining = per_iteration;
        bool done = false;
        std::function<void()> send = [&] {
            if (remaining-- == 0) {
                done = true;
                return;
            }
            conn.async_send(numbered(++next_id), [&](error_code ec, hl7::ack ack) {
                acknowledged += !ec && ack.accepted();
                send();
            });
        };
        send();
        ctx.restart();
        while (!done) // the connection's read keeps run() going
            ctx.run_one();
    }
    if (acknowledged != next_id || server.received != next_id)
        state.SkipWithError("a message was not acknowledged");
    report_rate(state, per_iteration);
    conn.async_close([] {});
    ctx.restart();
    ctx.run();
}

} // namespace

BENCHMARK_CAPTURE(enqueue, one_producer, 1, 8)->Name("outbox/enqueue_1")->MinTime(2.0)->UseRealTime();
BENCHMARK_CAPTURE(enqueue, sixteen_producers, 16, 256)->Name("outbox/enqueue_16")->MinTime(2.0)->UseRealTime();
BENCHMARK_CAPTURE(sqlite_baseline, per_message, 1)->Name("outbox/sqlite_commit_baseline")->MinTime(2.0)->UseRealTime();
BENCHMARK_CAPTURE(sqlite_baseline, one_transaction, 1000)
    ->Name("outbox/sqlite_transaction_baseline")
    ->MinTime(2.0)
    ->UseRealTime();
BENCHMARK_CAPTURE(deliver, full, hl7::outbox_synchronous::full, 200, 1)->Name("outbox/deliver")->MinTime(2.0)->UseRealTime();
BENCHMARK_CAPTURE(deliver, normal, hl7::outbox_synchronous::normal, 2000, 1)
    ->Name("outbox/deliver_normal")
    ->MinTime(2.0)
    ->UseRealTime();
BENCHMARK_CAPTURE(deliver, window_16, hl7::outbox_synchronous::full, 800, 1, 16)
    ->Name("outbox/deliver_window_16")
    ->MinTime(2.0)
    ->UseRealTime();
BENCHMARK_CAPTURE(deliver, lanes_8, hl7::outbox_synchronous::full, 800, 8)
    ->Name("outbox/deliver_lanes_8")
    ->MinTime(2.0)
    ->UseRealTime();
BENCHMARK_CAPTURE(direct_baseline, one_connection, 2000)->Name("outbox/direct_baseline")->MinTime(2.0)->UseRealTime();
