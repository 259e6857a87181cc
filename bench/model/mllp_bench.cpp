// MLLP framer benchmarks: decoding against a plain memchr scan of the same bytes, and encoding.
#include <hl7/model/mllp.hpp>

#include "support/util.hpp"

#include <benchmark/benchmark.h>

#include <array>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace {

constexpr std::size_t stream_size = std::size_t{64} << 20;
constexpr std::size_t chunk_size = std::size_t{64} << 10;

struct framed_stream {
    std::string bytes;
    std::size_t frames = 0;
    std::size_t payload_bytes = 0;
};

// 64 MiB of framed copies of the four samples, in turn; built once.
const framed_stream& sample_stream()
{
    static const framed_stream stream = [] {
        const std::array<std::string, 4> samples = {
            hl7::test::read_sample("adt_a01.hl7"),
            hl7::test::read_sample("oru_r01.hl7"),
            hl7::test::read_sample("ack_adt_a01.hl7"),
            hl7::test::read_sample("ack_oru_r01.hl7"),
        };
        framed_stream s;
        s.bytes.reserve(stream_size);
        for (std::size_t i = 0;; ++i) {
            const std::string& payload = samples[i % samples.size()];
            if (s.bytes.size() + payload.size() + hl7::mllp::overhead > stream_size)
                break;
            s.bytes += hl7::mllp::encode(payload);
            ++s.frames;
            s.payload_bytes += payload.size();
        }
        return s;
    }();
    return stream;
}

void mllp_decode(benchmark::State& state)
{
    const framed_stream& stream = sample_stream();
    const std::string_view bytes = stream.bytes;
    std::size_t frames_total = 0;
    for (auto _ : state) {
        hl7::mllp::decoder decoder;
        std::size_t frames = 0;
        std::size_t payload_bytes = 0;
        for (std::size_t offset = 0; offset < bytes.size(); offset += chunk_size) {
            decoder.feed(bytes.substr(offset, chunk_size));
            while (auto frame = decoder.next()) {
                if (!*frame)
                    break;  // an error, which the count check below catches
                ++frames;
                payload_bytes += frame->value().size();
            }
        }
        if (frames != stream.frames || payload_bytes != stream.payload_bytes) {
            state.SkipWithError("decoded frames differ from the frames encoded");
            break;
        }
        frames_total += frames;
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * bytes.size()));
    state.counters["frames"] = benchmark::Counter(static_cast<double>(frames_total), benchmark::Counter::kIsRate);
}

void memchr_baseline(benchmark::State& state)
{
    const framed_stream& stream = sample_stream();
    const std::string_view bytes = stream.bytes;
    for (auto _ : state) {
        std::size_t count = 0;
        for (std::size_t offset = 0; offset < bytes.size(); offset += chunk_size) {
            const std::string_view chunk = bytes.substr(offset, chunk_size);
            const char* p = chunk.data();
            const char* const end = p + chunk.size();
            while ((p = static_cast<const char*>(std::memchr(p, hl7::mllp::end_block, static_cast<std::size_t>(end - p))))) {
                ++count;
                ++p;
            }
        }
        if (count != stream.frames) {
            state.SkipWithError("0x1C count differs from the number of frames");
            break;
        }
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * bytes.size()));
}

void mllp_encode(benchmark::State& state)
{
    const std::string payload = hl7::test::read_sample("adt_a01.hl7");
    std::vector<char> buffer(payload.size() + hl7::mllp::overhead);
    for (auto _ : state) {
        auto written = hl7::mllp::encode_into(payload, buffer);
        benchmark::DoNotOptimize(written);
        benchmark::ClobberMemory();
        if (!written || written.value() != buffer.size()) {
            state.SkipWithError("encode_into failed");
            break;
        }
    }
    if (std::string_view(buffer.data(), buffer.size()) != hl7::mllp::encode(payload))
        state.SkipWithError("encode_into wrote a different frame than encode");
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * buffer.size()));
}

} // namespace

BENCHMARK(mllp_decode)->Unit(benchmark::kMillisecond);
BENCHMARK(memchr_baseline)->Unit(benchmark::kMillisecond);
BENCHMARK(mllp_encode);
