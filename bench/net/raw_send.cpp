// The baseline of `hl7 send`'s sequential path: plain blocking sockets, no HL7 beyond finding
// where each message ends. Reads a file of messages separated by blank lines (as hl7 send
// accepts them), sends each framed, waits for the reply frame, and prints one line per
// message with its round trip, as hl7 send does. Used by scripts/compare-send.
//
//     raw-send PORT FILE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

int main(int argc, char** argv)
{
    if (argc != 3) {
        std::fputs("usage: raw-send PORT FILE\n", stderr);
        return 2;
    }
    std::ifstream in(argv[2], std::ios::binary);
    std::ostringstream all;
    all << in.rdbuf();
    const std::string text = all.str();

    const int s = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(std::atoi(argv[1])));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        std::perror("raw-send: connect");
        return 1;
    }
    const int one = 1;
    ::setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);

    std::string frame, reply;
    char buf[65536];
    std::size_t pos = 0, n = 0;
    while (pos < text.size()) {
        std::size_t end = text.find("\n\n", pos);
        if (end == std::string::npos)
            end = text.size();
        frame.assign(1, '\x0b');
        frame.append(text, pos, end - pos);
        std::replace(frame.begin(), frame.end(), '\n', '\r');
        frame += "\r\x1c\r";
        pos = end + 2;
        if (frame.size() <= 4)
            continue;
        const auto start = std::chrono::steady_clock::now();
        if (::write(s, frame.data(), frame.size()) != static_cast<ssize_t>(frame.size()))
            return 1;
        reply.clear();
        while (reply.size() < 2 || reply[reply.size() - 2] != '\x1c') {
            const ssize_t r = ::read(s, buf, sizeof buf);
            if (r <= 0)
                return 1;
            reply.append(buf, static_cast<std::size_t>(r));
        }
        const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
        std::printf("%zu %.3f\n", ++n, ms);
    }
    return 0;
}
