#include "store.hpp"

#include "output.hpp"

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <system_error>

#include <fcntl.h>
#include <unistd.h>

namespace hl7::tool {

namespace fs = std::filesystem;

namespace {

[[noreturn]] void fail(const std::string& what)
{
    throw std::system_error(errno, std::generic_category(), what);
}

// The number at the start of `name` (`000042-X.hl7`), or 0.
std::uint64_t number_of(std::string_view name)
{
    std::uint64_t n = 0;
    const auto [end, ec] = std::from_chars(name.data(), name.data() + name.size(), n);
    if (ec != std::errc() || end == name.data() || end == name.data() + name.size() || *end != '-')
        return 0;
    return n;
}

} // namespace

message_store::message_store(fs::path dir)
    : dir_(std::move(dir))
{
    std::error_code ec;
    fs::create_directories(dir_, ec);
    if (ec || !fs::is_directory(dir_))
        throw failure(exit_failed,
                      "cannot create directory '" + dir_.string() + "': " + (ec ? ec.message() : "not a directory"));
    std::uint64_t highest = 0;
    for (const auto& entry : fs::directory_iterator(dir_, ec))
        highest = std::max(highest, number_of(entry.path().filename().string()));
    if (ec)
        throw failure(exit_failed, "cannot read directory '" + dir_.string() + "': " + ec.message());
    next_ = highest + 1;
    dir_fd_ = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd_ < 0)
        throw failure(exit_failed, "cannot open directory '" + dir_.string() + "': " + std::strerror(errno));
}

message_store::~message_store()
{
    if (dir_fd_ >= 0)
        ::close(dir_fd_);
}

std::string message_store::file_name(std::uint64_t number, std::string_view control_id)
{
    char digits[24];
    std::snprintf(digits, sizeof digits, "%06llu", static_cast<unsigned long long>(number));
    std::string name = digits;
    if (!control_id.empty()) {
        name += '-';
        for (char c : control_id.substr(0, 64)) {
            const bool safe = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
                              c == '_' || c == '.';
            name += safe ? c : '_';
        }
    }
    return name + ".hl7";
}

fs::path message_store::save(std::string_view control_id, std::string_view bytes)
{
    const fs::path temporary =
        dir_ / (".incoming-" + std::to_string(::getpid()) + "-" + std::to_string(temporaries_++) + ".part");
    const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0)
        fail("cannot create '" + temporary.string() + "'");
    std::size_t written = 0;
    while (written < bytes.size()) {
        const ssize_t n = ::write(fd, bytes.data() + written, bytes.size() - written);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            const int e = errno;
            ::close(fd);
            ::unlink(temporary.c_str());
            errno = e;
            fail("cannot write '" + temporary.string() + "'");
        }
        written += static_cast<std::size_t>(n);
    }
    if (::fsync(fd) != 0 || ::close(fd) != 0) {
        const int e = errno;
        ::unlink(temporary.c_str());
        errno = e;
        fail("cannot sync '" + temporary.string() + "'");
    }
    // link() never replaces a name that exists (rename() would): a file already there, from
    // another listener on the same directory say, makes this one take the next number.
    fs::path final;
    for (;;) {
        final = dir_ / file_name(next_++, control_id);
        if (::link(temporary.c_str(), final.c_str()) == 0)
            break;
        if (errno != EEXIST) {
            const int e = errno;
            ::unlink(temporary.c_str());
            errno = e;
            fail("cannot create '" + final.string() + "'");
        }
    }
    ::unlink(temporary.c_str());
    if (::fsync(dir_fd_) != 0)
        fail("cannot sync directory '" + dir_.string() + "'");
    return final;
}

} // namespace hl7::tool
