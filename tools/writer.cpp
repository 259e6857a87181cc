#include "writer.hpp"

#include <boost/asio/error.hpp>

#include <cerrno>
#include <climits>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

namespace hl7::tool {

namespace asio = boost::asio;
using boost::system::error_code;

namespace {

// A pipe that polls writable has room for PIPE_BUF bytes, and a character device that is not a
// terminal (/dev/null) takes what it is given. A terminal can be paused by its user, a regular
// file can wait for a slow disk, a socket can take less than PIPE_BUF: those are left to the
// thread.
bool takes_ready_writes(int fd)
{
    struct stat st {};
    if (::fstat(fd, &st) != 0)
        return false;
    return S_ISFIFO(st.st_mode) || (S_ISCHR(st.st_mode) && ::isatty(fd) == 0);
}

} // namespace

fd_writer::fd_writer(int fd, std::function<void(error_code)> on_broken, std::size_t max_queued_lines,
                     std::chrono::milliseconds grace)
    : fd_(fd), takes_ready_writes_(takes_ready_writes(fd)), on_broken_(std::move(on_broken)),
      max_queued_lines_(max_queued_lines), grace_(grace), thread_([this] { run(); })
{
}

fd_writer::~fd_writer()
{
    {
        std::lock_guard lock(mutex_);
        stopping_ = true;
    }
    changed_.notify_all();
    thread_.join();
}

void fd_writer::complete(item& i, error_code ec)
{
    if (!i.done)
        return;
    asio::dispatch(asio::append(std::move(i.done), ec)); // through the handler's associated executor
}

void fd_writer::enqueue(std::string text, asio::any_completion_handler<void(error_code)> done, asio::any_io_executor ex)
{
    error_code broken;
    bool written = false;
    {
        std::lock_guard lock(mutex_);
        broken = broken_;
        if (!broken && takes_ready_writes_ && queue_.empty() && !writing_)
            written = write_ready(text);
        if (!broken && !written) {
            std::list<item> one;
            one.push_back({std::move(text), std::move(done)});
            queue_.splice(queue_.end(), one);
        }
    }
    if (broken || written) {
        asio::post(ex, asio::append(std::move(done), broken)); // then through the handler's own executor
        return;
    }
    changed_.notify_one();
}

// Writes as much of `text` as the descriptor takes without blocking, a chunk of at most
// PIPE_BUF bytes at a time while it polls writable, and erases it from `text`; true when all
// of it went. A failure leaves the rest to the thread, which reports it.
bool fd_writer::write_ready(std::string& text)
{
    std::size_t done = 0;
    while (done < text.size()) {
        pollfd p{fd_, POLLOUT, 0};
        if (::poll(&p, 1, 0) != 1 || p.revents != POLLOUT)
            break;
        const std::size_t chunk = std::min<std::size_t>(text.size() - done, PIPE_BUF);
        const ssize_t n = ::write(fd_, text.data() + done, chunk);
        if (n <= 0)
            break;
        done += static_cast<std::size_t>(n);
    }
    text.erase(0, done);
    return text.empty();
}

void fd_writer::write_line(std::string text)
{
    {
        std::lock_guard lock(mutex_);
        if (broken_)
            return;
        if (queued_line_bytes_ + text.size() > max_queued_lines_) {
            ++dropped_;
            return;
        }
        queued_line_bytes_ += text.size();
        queue_.push_back({std::move(text), {}});
    }
    changed_.notify_one();
}

std::uint64_t fd_writer::dropped() const
{
    std::lock_guard lock(mutex_);
    return dropped_;
}

// Writes with poll() first and at most PIPE_BUF bytes at a time, which a pipe that polls
// writable takes without blocking: the thread never sleeps in write() on a reader that stopped
// reading, so it can give up on one.
error_code fd_writer::write_all(const std::string& bytes)
{
    std::size_t done = 0;
    auto stalled_since = std::chrono::steady_clock::now();
    while (done < bytes.size()) {
        pollfd p{fd_, POLLOUT, 0};
        const int ready = ::poll(&p, 1, 100);
        if (ready < 0 && errno != EINTR)
            return {errno, boost::system::system_category()};
        if (ready <= 0) {
            std::lock_guard lock(mutex_);
            if (stopping_ && std::chrono::steady_clock::now() - stalled_since > grace_)
                return asio::error::operation_aborted;
            continue;
        }
        const std::size_t chunk = std::min<std::size_t>(bytes.size() - done, PIPE_BUF);
        const ssize_t n = ::write(fd_, bytes.data() + done, chunk);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return {errno, boost::system::system_category()};
        }
        done += static_cast<std::size_t>(n);
        stalled_since = std::chrono::steady_clock::now();
    }
    return {};
}

void fd_writer::run()
{
    for (;;) {
        std::list<item> batch;
        std::uint64_t newly_dropped = 0;
        {
            std::unique_lock lock(mutex_);
            writing_ = false;
            changed_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
            if (queue_.empty())
                return; // stopping, and everything written
            batch.splice(batch.end(), queue_);
            writing_ = true;
            queued_line_bytes_ = 0;
            newly_dropped = dropped_ - dropped_reported_;
            dropped_reported_ = dropped_;
        }
        std::string bytes;
        for (const item& i : batch)
            bytes += i.text;
        if (newly_dropped)
            bytes += "hl7: " + std::to_string(newly_dropped) + " log lines dropped (standard error is slow)\n";
        const error_code ec = write_all(bytes);
        for (item& i : batch)
            complete(i, ec);
        if (ec) {
            std::list<item> rest;
            {
                std::lock_guard lock(mutex_);
                broken_ = ec;
                rest.splice(rest.end(), queue_);
            }
            for (item& i : rest)
                complete(i, ec);
            if (on_broken_ && ec != asio::error::operation_aborted)
                on_broken_(ec);
            return;
        }
    }
}

} // namespace hl7::tool
