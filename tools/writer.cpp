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

fd_writer::fd_writer(int fd, std::function<void(error_code)> on_broken, std::size_t max_queued_lines,
                     std::chrono::milliseconds grace)
    : fd_(fd), sink_(sink_of(fd)), on_broken_(std::move(on_broken)),
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

void fd_writer::enqueue(std::string text, asio::any_completion_handler<void(error_code)> done)
{
    std::list<item> one;
    one.push_back({std::move(text), std::move(done)});
    error_code broken;
    {
        std::lock_guard lock(mutex_);
        broken = broken_;
        if (!broken)
            queue_.splice(queue_.end(), one);
    }
    if (broken) {
        // Never inside the initiating call: by way of another thread, then the handler's executor.
        asio::post(asio::system_executor(), [h = std::move(one.front().done), broken]() mutable {
            asio::dispatch(asio::append(std::move(h), broken));
        });
        return;
    }
    changed_.notify_one();
}

fd_writer::sink fd_writer::sink_of(int fd)
{
    struct stat st {};
    struct stat null {};
    if (::fstat(fd, &st) != 0)
        return sink::other;
    if (S_ISFIFO(st.st_mode))
        return sink::pipe;
    if (S_ISCHR(st.st_mode) && ::stat("/dev/null", &null) == 0 && S_ISCHR(null.st_mode) && st.st_rdev == null.st_rdev)
        return sink::null;
    return sink::other;
}

bool fd_writer::try_write(std::string_view text)
{
    if (sink_ == sink::other || text.size() > PIPE_BUF)
        return false;
    // Under the lock, so that nothing is queued meanwhile to be written before this.
    std::lock_guard lock(mutex_);
    if (broken_ || writing_ || !queue_.empty())
        return false;
    pollfd p{fd_, POLLOUT, 0};
    if (sink_ == sink::pipe && (::poll(&p, 1, 0) != 1 || p.revents != POLLOUT))
        return false;
    // A failure is the thread's to find and report, when async_write tries again.
    return ::write(fd_, text.data(), text.size()) == static_cast<ssize_t>(text.size());
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
