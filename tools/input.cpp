#include "input.hpp"

#include "output.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

namespace hl7::tool {

namespace {

bool starts_with_any(std::string_view line, std::initializer_list<std::string_view> ids)
{
    for (std::string_view id : ids)
        if (line.starts_with(id))
            return true;
    return false;
}

std::string too_large(std::size_t max_size)
{
    return "message larger than the maximum of " + std::to_string(max_size) + " bytes (--max-frame)";
}

// The first `c` in [p, e), or e.
const char* find(const char* p, const char* e, char c) noexcept
{
    const void* hit = std::memchr(p, c, static_cast<std::size_t>(e - p));
    return hit ? static_cast<const char*>(hit) : e;
}

std::string system_error_text(int error)
{
    return describe({error, boost::system::system_category()});
}

} // namespace

message_splitter::message_splitter(std::size_t max_size)
    : max_size_(max_size)
{
}

void message_splitter::feed(std::string_view bytes)
{
    if (mode_ == mode::unknown) {
        // Leading whitespace and a UTF-8 byte order mark say nothing; the first other byte
        // tells MLLP framing (a start block) from plain text.
        for (;;) {
            if (bytes.starts_with("\xEF\xBB\xBF"))
                bytes.remove_prefix(3);
            else if (!bytes.empty() && (bytes[0] == ' ' || bytes[0] == '\t' || bytes[0] == '\r' || bytes[0] == '\n'))
                bytes.remove_prefix(1);
            else
                break;
        }
        if (bytes.empty())
            return;
        if (bytes[0] == mllp::start_block) {
            mode_ = mode::mllp;
            decoder_ = std::make_unique<mllp::decoder>(max_size_);
        } else {
            mode_ = mode::text;
        }
    }
    if (mode_ == mode::text) {
        feed_text(bytes);
        return;
    }
    decoder_->feed(bytes);
    while (auto frame = decoder_->next()) {
        if (*frame) {
            feed_text(frame->value());
            end_line();
            end_message();
            after_cr_ = false;
        } else if (frame->error() == errc::frame_too_large) {
            ready_.push_back({{}, too_large(max_size_)});
        } else {
            ready_.push_back({{}, describe(frame->error())});
        }
    }
}

void message_splitter::finish()
{
    if (mode_ == mode::mllp) {
        if (decoder_->in_frame())
            ready_.push_back({{}, "the input ends inside an MLLP frame"});
        return;
    }
    if (!line_.empty() || line_truncated_)
        end_line();
    end_message();
}

std::optional<input_message> message_splitter::next()
{
    if (ready_.empty())
        return std::nullopt;
    input_message m = std::move(ready_.front());
    ready_.pop_front();
    return m;
}

// Line ends are found with one memchr pass per kind (CR, LF) over the bytes, each resumed
// after the line end it found: string_view's find_first_of would call memchr over its set
// once for every byte it passes.
void message_splitter::feed_text(std::string_view bytes)
{
    const char* p = bytes.data();
    const char* const e = p + bytes.size();
    const char* next_cr = find(p, e, '\r');
    const char* next_lf = find(p, e, '\n');
    while (p < e) {
        const char* end = std::min(next_cr, next_lf);
        if (end > p) {
            add_to_line({p, static_cast<std::size_t>(end - p)});
            after_cr_ = false;
        }
        if (end == e)
            return;
        if (*end == '\n' && after_cr_)
            after_cr_ = false; // the LF of a CRLF
        else {
            end_line();
            after_cr_ = *end == '\r';
        }
        p = end + 1;
        if (next_cr < p)
            next_cr = find(p, e, '\r');
        if (next_lf < p)
            next_lf = find(p, e, '\n');
    }
}

void message_splitter::add_to_line(std::string_view bytes)
{
    if (line_blank_)
        line_blank_ = bytes.find_first_not_of(" \t") == std::string_view::npos;
    if (line_truncated_)
        return;
    const std::size_t room = max_size_ + 1 - line_.size();
    if (bytes.size() > room) {
        bytes = bytes.substr(0, room);
        line_truncated_ = true;
    }
    line_.append(bytes);
}

void message_splitter::end_line()
{
    const std::string_view line = line_;
    if (line_blank_ && !line_truncated_) {
        end_message();
    } else if (line.starts_with("MSH")) {
        end_message();
        if (line_truncated_ || line.size() + 1 > max_size_) {
            oversized_ = true;
        } else {
            message_.assign(line);
            message_ += '\r';
        }
    } else if (starts_with_any(line, {"FHS", "BHS", "BTS", "FTS"})) {
        end_message();
    } else if (!oversized_) {
        if (line_truncated_ || message_.size() + line.size() + 1 > max_size_) {
            oversized_ = true;
            std::string().swap(message_);
        } else {
            message_.append(line);
            message_ += '\r';
        }
    }
    line_.clear();
    line_blank_ = true;
    line_truncated_ = false;
}

void message_splitter::end_message()
{
    if (oversized_)
        ready_.push_back({{}, too_large(max_size_)});
    else if (!message_.empty())
        ready_.push_back({std::exchange(message_, {}), {}});
    message_.clear();
    oversized_ = false;
}

// ---------------------------------------------------------------------------------------

message_reader::message_reader(std::vector<std::string> files, std::size_t max_size, std::size_t chunk_size)
    : files_(std::move(files)), max_size_(max_size), chunk_(chunk_size)
{
    if (files_.empty())
        files_.emplace_back("-");
    for (const std::string& f : files_) {
        if (f == "-")
            continue;
        struct stat st{};
        if (::stat(f.c_str(), &st) != 0)
            throw failure(exit_usage, "cannot open '" + f + "': " + system_error_text(errno));
        if (S_ISDIR(st.st_mode))
            throw failure(exit_usage, "cannot read '" + f + "': it is a directory");
        if (::access(f.c_str(), R_OK) != 0)
            throw failure(exit_usage, "cannot open '" + f + "': " + system_error_text(errno));
    }
}

message_reader::~message_reader()
{
    close_current();
}

std::optional<input_message> message_reader::next()
{
    for (;;) {
        if (splitter_) {
            if (auto m = splitter_->next())
                return m;
        }
        if (fd_ < 0 && !open_next())
            return std::nullopt;
        read_chunk();
    }
}

std::optional<input_message> message_reader::poll(bool& finished)
{
    finished = false;
    for (;;) {
        if (splitter_) {
            if (auto m = splitter_->next())
                return m;
        }
        if (fd_ < 0 && !open_next()) {
            finished = true;
            return std::nullopt;
        }
        if (!regular_) {
            pollfd p{fd_, POLLIN, 0};
            const int ready = ::poll(&p, 1, 0);
            if (ready == 0 || (ready < 0 && errno == EINTR))
                return std::nullopt;
        }
        read_chunk();
    }
}

void message_reader::read_chunk()
{
    const ssize_t n = ::read(fd_, chunk_.data(), chunk_.size());
    if (n > 0) {
        splitter_->feed({chunk_.data(), static_cast<std::size_t>(n)});
    } else if (n == 0) {
        splitter_->finish();
        close_current();
    } else if (errno != EINTR) {
        throw failure(exit_failed, "cannot read '" + name_ + "': " + system_error_text(errno));
    }
}

bool message_reader::open_next()
{
    if (next_file_ == files_.size())
        return false;
    name_ = files_[next_file_++];
    if (name_ == "-") {
        fd_ = STDIN_FILENO;
        owns_fd_ = false;
        name_ = "standard input";
    } else {
        fd_ = ::open(name_.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd_ < 0)
            throw failure(exit_failed, "cannot open '" + name_ + "': " + system_error_text(errno));
        owns_fd_ = true;
    }
    struct stat st{};
    regular_ = ::fstat(fd_, &st) == 0 && S_ISREG(st.st_mode);
    splitter_.emplace(max_size_);
    return true;
}

void message_reader::close_current() noexcept
{
    if (fd_ >= 0 && owns_fd_)
        ::close(fd_);
    fd_ = -1;
    owns_fd_ = false;
}

} // namespace hl7::tool
