// Standard output and standard error written by a thread of their own, so that a reader that
// is slow, or never reads, stalls no I/O thread: a record says when it has been written (and
// whoever awaits that waits, not the thread), a log line is dropped when too many wait. A
// small record with nothing ahead of it can be written by the caller instead, when the
// descriptor takes it at once: that spares two thread switches per record.
#pragma once

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/append.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/system/error_code.hpp>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <list>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

namespace hl7::tool {

/// Writes to one file descriptor from its own thread, in the order given.
///
/// Thread safety: every member may be called from any thread. Lifetime: destruction stops the
/// thread once what is queued is written, or after `grace` without progress (a reader that
/// never reads), completing what is left with operation_aborted.
class fd_writer {
public:
    /// `on_broken(ec)` is called once, on the writer's thread, when writing fails (EPIPE: the
    /// reader is gone); every write after that fails at once with the same error. Log lines
    /// beyond `max_queued_lines` bytes waiting are dropped and counted.
    fd_writer(int fd, std::function<void(boost::system::error_code)> on_broken = {},
              std::size_t max_queued_lines = std::size_t{1} << 20,
              std::chrono::milliseconds grace = std::chrono::seconds(2));
    fd_writer(const fd_writer&) = delete;
    fd_writer& operator=(const fd_writer&) = delete;
    ~fd_writer();

    /// Writes all of `text`, then completes with signature void(error_code): clear once
    /// written, the failure otherwise. Completes through the handler's associated executor.
    /// Memory: nothing bounds what waits here but the callers, each of which waits for its
    /// record (hl7 listen has one per connection at most). Not cancellable.
    template <class CompletionToken>
    auto async_write(std::string text, CompletionToken&& token)
    {
        return boost::asio::async_initiate<CompletionToken, void(boost::system::error_code)>(
            [this](auto handler, std::string t) {
                enqueue(std::move(t), boost::asio::any_completion_handler<void(boost::system::error_code)>(
                                          std::move(handler)));
            },
            token, std::move(text));
    }

    /// Writes all of `text` now, or nothing: when nothing waits to be written, `text` is at
    /// most PIPE_BUF bytes, and the descriptor is /dev/null or a pipe that polls writable
    /// (which takes PIPE_BUF bytes whole, without blocking). Returns whether it did; when not,
    /// async_write writes it. A terminal, a file or a socket is always left to the thread: it
    /// may block (a paused terminal, a slow disk) or take part of a write.
    bool try_write(std::string_view text);

    /// Queues a line of log, or drops it when too much already waits; the number dropped is
    /// written once there is room again.
    void write_line(std::string text);

    /// Lines dropped so far.
    std::uint64_t dropped() const;

private:
    // What try_write may write to at once: /dev/null always, a pipe when it polls writable.
    enum class sink { pipe, null, other };

    struct item {
        std::string text;
        boost::asio::any_completion_handler<void(boost::system::error_code)> done; // empty for a log line
    };

    void enqueue(std::string text, boost::asio::any_completion_handler<void(boost::system::error_code)> done);
    void run();
    boost::system::error_code write_all(const std::string& bytes);
    static void complete(item& i, boost::system::error_code ec);
    static sink sink_of(int fd);

    const int fd_;
    const sink sink_;
    const std::function<void(boost::system::error_code)> on_broken_;
    const std::size_t max_queued_lines_;
    const std::chrono::milliseconds grace_;
    mutable std::mutex mutex_;
    std::condition_variable changed_;
    std::list<item> queue_; // items are moved between lists, never move-assigned
    std::size_t queued_line_bytes_ = 0;
    std::uint64_t dropped_ = 0;
    std::uint64_t dropped_reported_ = 0;
    boost::system::error_code broken_;
    bool writing_ = false; // the thread writes what it took from queue_
    bool stopping_ = false;
    std::thread thread_;
};

} // namespace hl7::tool
