// Running coroutine tests with a hard deadline.
#pragma once

#include <doctest/doctest.h>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <chrono>
#include <condition_variable>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace hl7::test {

/// Runs `body` on a fresh io_context with `threads` threads and fails the current doctest test
/// case (FAIL / REQUIRE) if it has not finished within `deadline`, so a bug fails fast instead
/// of hanging. An exception escaping the body fails the test with its what(); a doctest
/// REQUIRE failing inside the body fails the test as it would outside.
///
/// When the body finishes, the io_context is stopped and destroyed, with whatever work is
/// still pending in it (a server left running, a client still connected).
///
/// A handler that blocks its thread (instead of awaiting) cannot be interrupted: if a thread is
/// still busy a second after the deadline, it is left behind (detached, keeping the io_context
/// alive) and the test fails anyway.
inline void run_async(std::function<boost::asio::awaitable<void>()> body,
                      std::chrono::milliseconds deadline = std::chrono::seconds(10), unsigned threads = 1)
{
    REQUIRE(threads >= 1);
    // Shared with the threads, so a thread left behind keeps it alive.
    struct state {
        explicit state(unsigned threads) : ctx(static_cast<int>(threads)) {}
        boost::asio::io_context ctx;
        std::mutex mutex;
        std::condition_variable changed;
        unsigned running = 0;
        bool done = false;
        std::exception_ptr failure;
    };
    auto st = std::make_shared<state>(threads);

    // The handler must not own `st`: it lives inside the io_context that `st` owns.
    boost::asio::co_spawn(st->ctx, std::move(body), [s = st.get()](std::exception_ptr e) {
        {
            std::lock_guard lock(s->mutex);
            s->done = true;
            if (!s->failure)
                s->failure = e;
        }
        s->ctx.stop();
    });

    std::vector<std::thread> workers;
    st->running = threads;
    for (unsigned i = 0; i < threads; ++i) {
        workers.emplace_back([st] {
            try {
                st->ctx.run();
            } catch (...) {
                // A handler outside the body threw: fail the test rather than std::terminate.
                std::lock_guard lock(st->mutex);
                if (!st->failure)
                    st->failure = std::current_exception();
                st->ctx.stop();
            }
            std::lock_guard lock(st->mutex);
            --st->running;
            st->changed.notify_all();
        });
    }

    std::unique_lock lock(st->mutex);
    const bool in_time = st->changed.wait_for(lock, deadline, [&] { return st->running == 0; });
    if (!in_time) {
        st->ctx.stop();
        if (!st->changed.wait_for(lock, std::chrono::seconds(1), [&] { return st->running == 0; })) {
            lock.unlock();
            for (auto& w : workers)
                w.detach();
            FAIL("test body did not finish within " << deadline.count()
                                                     << " ms, and a thread is still blocked in a handler");
        }
    }
    const bool done = st->done;
    const std::exception_ptr failure = st->failure;
    lock.unlock();
    for (auto& w : workers)
        w.join();
    // Destroys what is still pending, while whatever the body refers to is alive.
    st.reset();

    if (!in_time)
        FAIL("test body did not finish within " << deadline.count() << " ms");
    if (failure) {
        try {
            std::rethrow_exception(failure);
        } catch (const std::exception& e) {
            FAIL("exception escaped the test body: " << std::string(e.what()));
        }
        // Anything else (doctest's own REQUIRE failure) goes on to doctest as it is.
    }
    if (!done)
        FAIL("test body never finished: the io_context ran out of work while it was waiting");
}

/// Waits for `d` in a coroutine.
inline boost::asio::awaitable<void> sleep_for(std::chrono::steady_clock::duration d)
{
    boost::asio::steady_timer timer(co_await boost::asio::this_coro::executor, d);
    co_await timer.async_wait(boost::asio::use_awaitable);
}

/// Waits in a coroutine until `ready()` holds, looking again every millisecond: the way a test
/// orders itself after an event of another party (a frame arrived, a connection accepted),
/// where a fixed sleep would be a guess that a slow machine loses. Fails the test, naming
/// `what`, if it does not hold within five seconds. (A plain string and a lambda that captures
/// by reference: GCC 12 may destroy twice a class temporary that lives across a co_await, which
/// only a trivially destructible one survives.)
template <class Ready>
boost::asio::awaitable<void> until(Ready ready, const char* what)
{
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    boost::asio::steady_timer timer(co_await boost::asio::this_coro::executor);
    while (!ready()) {
        REQUIRE_MESSAGE(std::chrono::steady_clock::now() < deadline, "still waiting for " << std::string(what));
        timer.expires_after(std::chrono::milliseconds(1));
        co_await timer.async_wait(boost::asio::use_awaitable);
    }
}

} // namespace hl7::test
