using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;

namespace Vism.Benchmarks;

/// <summary>
/// What this machine's two cores can do for a producer/consumer ring, with no vism in it
/// (docs/benchmarks.md, "Cross-core probe"): two threads pinned to CPUs A and B share a ring
/// (64 KiB chunks, spinning on the cursors, nothing else), and each sample measures, one after the
/// other: the one-way cache-line transfer between the cores (a flag bounced 20,000 times), the
/// ring's throughput (512 MiB from A to B), and a single-thread memcpy of the same chunks into a
/// buffer of the ring's size on A. The ring's share of memcpy is what the channel and the
/// streaming rows can reach at best at that moment (after one second of warm-up, not counted); the summary gives its quantiles and the share
/// of samples below half of memcpy. Run it beside a benchmark that moves bulk data between the two
/// cores to tell a slow phase of the machine from a slow vism.
/// Command: <c>dotnet run -c Release --project benchmarks/Vism.Benchmarks -- cross-core [seconds (20)] [ring MiB (4)] [--cpus A,B (0,1)] [--each]</c>
/// </summary>
public static unsafe partial class CrossCore
{
    private const int Chunk = 64 * 1024;
    private const long SampleBytes = 512L << 20;
    private const int Bounces = 20_000;
    private const string Usage = "cross-core [seconds] [ring MiB] [--cpus A,B] [--each]";

    [LibraryImport("libc", SetLastError = true)]
    private static partial int sched_setaffinity(int pid, nint size, ulong* mask);

    // Each shared word on its own cache line (offsets in longs: 0, 8, 16, 24).
    private const int Produced = 0, Consumed = 8, Flag = 16, Command = 24;
    private const long Idle = 0, Bounce = 1, Drain = 2, Quit = 3;

    public static int Run(string[] args)
    {
        int seconds = 20, ringMiB = 4, cpuA = 0, cpuB = 1;
        bool each = false;
        var positional = new List<string>();
        for (int i = 0; i < args.Length; i++)
        {
            if (args[i] == "--each") each = true;
            else if (args[i] == "--cpus" && i + 1 < args.Length)
            {
                string[] c = args[++i].Split(',');
                if (c.Length != 2 || !int.TryParse(c[0], CultureInfo.InvariantCulture, out cpuA) || !int.TryParse(c[1], CultureInfo.InvariantCulture, out cpuB)
                    || cpuA is < 0 or > 63 || cpuB is < 0 or > 63 || cpuA == cpuB)
                {
                    Console.Error.WriteLine($"cross-core: --cpus '{args[i]}' is not two different CPU numbers A,B below 64; usage: {Usage}");
                    return 2;
                }
            }
            else if (args[i].StartsWith("--", StringComparison.Ordinal))
            {
                Console.Error.WriteLine($"cross-core: unknown option '{args[i]}'; usage: {Usage}");
                return 2;
            }
            else positional.Add(args[i]);
        }
        if (positional.Count > 2
            || (positional.Count > 0 && (!int.TryParse(positional[0], CultureInfo.InvariantCulture, out seconds) || seconds is < 1 or > 3600))
            || (positional.Count > 1 && (!int.TryParse(positional[1], CultureInfo.InvariantCulture, out ringMiB) || ringMiB is < 1 or > 1024)))
        {
            Console.Error.WriteLine($"cross-core: seconds must be 1-3600 and ring MiB 1-1024; usage: {Usage}");
            return 2;
        }

        Console.WriteLine($"cross-core probe: CPUs {cpuA} -> {cpuB}, {ringMiB} MiB ring of {Chunk >> 10} KiB chunks, {SampleBytes >> 20} MiB per sample, {seconds} s after 1 s warm-up; "
            + $"load average before: {File.ReadAllText("/proc/loadavg").Trim()}");
        Summary summary = Probe(TimeSpan.FromSeconds(seconds), ringMiB, cpuA, cpuB,
            each ? s => Console.WriteLine($"  cache line {s.C2cNs:F0} ns one way, ring {s.Ring:F1} GB/s, memcpy {s.Memcpy:F1} GB/s, ring/memcpy {s.Ring / s.Memcpy:F2}") : null);
        Console.WriteLine("| samples | cache line one way (ns), median | ring GB/s: p10 / median / p90 | memcpy GB/s: p10 / median / p90 | ring/memcpy: p10 / median / p90 | samples below 0.5x memcpy |");
        Console.WriteLine("|---|---|---|---|---|---|");
        Console.WriteLine($"| {summary.Samples} | {summary.C2cNs:F0} | {summary.Ring.P10:F1} / {summary.Ring.Median:F1} / {summary.Ring.P90:F1} | {summary.Memcpy.P10:F1} / {summary.Memcpy.Median:F1} / {summary.Memcpy.P90:F1} | "
            + $"{summary.Share.P10:F2} / {summary.Share.Median:F2} / {summary.Share.P90:F2} | {summary.Slow} ({100.0 * summary.Slow / Math.Max(1, summary.Samples):F0} %) |");
        Console.WriteLine($"load average after: {File.ReadAllText("/proc/loadavg").Trim()}");
        return 0;
    }

    /// <summary>One probe sample: one-way cache-line transfer, ring and memcpy GB/s.</summary>
    public readonly record struct Sample(double C2cNs, double Ring, double Memcpy);

    /// <summary>p10, median and p90 of one measure over the samples.</summary>
    public readonly record struct Spread(double P10, double Median, double P90);

    /// <summary>A probe's result: sample count, median one-way cache-line time, the ring, memcpy and
    /// ring/memcpy quantiles, and how many samples had the ring below half of memcpy.</summary>
    public sealed record Summary(int Samples, double C2cNs, Spread Ring, Spread Memcpy, Spread Share, int Slow)
    {
        /// <summary>One line for a benchmark's header.</summary>
        public override string ToString() =>
            $"ring {Ring.Median:F1} GB/s median (p10 {Ring.P10:F1}), memcpy {Memcpy.Median:F1} GB/s, ring/memcpy {Share.Median:F2}, {Slow} of {Samples} samples below 0.5x, cache line {C2cNs:F0} ns";
    }

    /// <summary>Runs the probe for <paramref name="duration"/> after one second of warm-up, on two
    /// threads of its own pinned to <paramref name="cpuA"/> (producer, memcpy) and
    /// <paramref name="cpuB"/> (consumer); the calling thread's affinity is not touched.</summary>
    public static Summary Probe(TimeSpan duration, int ringMiB, int cpuA, int cpuB, Action<Sample>? each = null)
    {
        long ringBytes = (long)ringMiB << 20, slots = ringBytes / Chunk;
        byte* ring = (byte*)NativeMemory.AlignedAlloc((nuint)ringBytes, 4096);
        byte* copyTarget = (byte*)NativeMemory.AlignedAlloc((nuint)ringBytes, 4096);
        byte* source = (byte*)NativeMemory.AlignedAlloc(Chunk, 4096);
        byte* sink = (byte*)NativeMemory.AlignedAlloc(Chunk, 4096);
        long* shared = (long*)NativeMemory.AlignedAlloc(32 * sizeof(long), 64);
        try
        {
            new Span<byte>(ring, (int)ringBytes).Fill(1);
            new Span<byte>(copyTarget, (int)ringBytes).Fill(2);
            new Random(1).NextBytes(new Span<byte>(source, Chunk));
            new Span<long>(shared, 32).Clear();
            var samples = new List<Sample>();
            Exception? failure = null;
            var consumer = new Thread(() => Consume(shared, ring, sink, slots, cpuB)) { IsBackground = true, Name = "cross-core consumer" };
            var producer = new Thread(() =>
            {
                try
                {
                    Produce(shared, ring, copyTarget, source, slots, cpuA, duration, samples, each);
                }
                catch (Exception ex)
                {
                    failure = ex;
                }
                finally
                {
                    Volatile.Write(ref shared[Command], Quit);
                }
            }) { IsBackground = true, Name = "cross-core producer" };
            consumer.Start();
            producer.Start();
            producer.Join();
            consumer.Join();
            if (failure is not null)
                throw new InvalidOperationException($"the cross-core probe failed: {failure.Message}", failure);
            double[] share = [.. samples.Select(x => x.Ring / x.Memcpy).Order()];
            double[] rates = [.. samples.Select(x => x.Ring).Order()];
            double[] copies = [.. samples.Select(x => x.Memcpy).Order()];
            double[] c2cs = [.. samples.Select(x => x.C2cNs).Order()];
            return new Summary(samples.Count, Q(c2cs, 0.5), Of(rates), Of(copies), Of(share), share.Count(x => x < 0.5));
        }
        finally
        {
            NativeMemory.AlignedFree(ring);
            NativeMemory.AlignedFree(copyTarget);
            NativeMemory.AlignedFree(source);
            NativeMemory.AlignedFree(sink);
            NativeMemory.AlignedFree(shared);
        }

        static Spread Of(double[] sorted) => new(Q(sorted, 0.1), Q(sorted, 0.5), Q(sorted, 0.9));
    }

    /// <summary>A's side: samples until the time is up (the first second is dropped).</summary>
    private static void Produce(long* shared, byte* ring, byte* copyTarget, byte* source, long slots, int cpu, TimeSpan duration, List<Sample> samples, Action<Sample>? each)
    {
        Pin(cpu);
        // The first second is warm-up (its samples are dropped): the loops are compiled again
        // with full optimization after their first runs, and the pages are touched.
        long warm = Stopwatch.GetTimestamp() + Stopwatch.Frequency;
        long end = warm + (long)(duration.TotalSeconds * Stopwatch.Frequency);
        long produced = 0;
        while (Stopwatch.GetTimestamp() < end)
        {
            // One-way cache-line transfer: A writes odd values, B answers with the next even one.
            Volatile.Write(ref shared[Flag], 0);
            Volatile.Write(ref shared[Command], Bounce);
            long t0 = Stopwatch.GetTimestamp();
            for (long v = 0; v < 2L * Bounces; v += 2)
            {
                Volatile.Write(ref shared[Flag], v + 1);
                while (Volatile.Read(ref shared[Flag]) != v + 2) { }
            }
            double c2c = Stopwatch.GetElapsedTime(t0).TotalNanoseconds / Bounces / 2;
            Volatile.Write(ref shared[Command], Idle);

            // The ring: A copies chunks in and publishes, B copies them out (both spin).
            long chunks = SampleBytes / Chunk, last = produced + chunks;
            Volatile.Write(ref shared[Command], Drain);
            t0 = Stopwatch.GetTimestamp();
            for (long c = produced; c < last; c++)
            {
                while (c - Volatile.Read(ref shared[Consumed]) >= slots) { }
                new ReadOnlySpan<byte>(source, Chunk).CopyTo(new Span<byte>(ring + c % slots * Chunk, Chunk));
                Volatile.Write(ref shared[Produced], c + 1);
            }
            while (Volatile.Read(ref shared[Consumed]) < last) { }
            double ringRate = SampleBytes / Stopwatch.GetElapsedTime(t0).TotalSeconds / 1e9;
            Volatile.Write(ref shared[Command], Idle);
            produced = last;

            // memcpy of the same chunks into a buffer of the ring's size, on A alone.
            t0 = Stopwatch.GetTimestamp();
            for (long c = 0; c < chunks; c++)
                new ReadOnlySpan<byte>(source, Chunk).CopyTo(new Span<byte>(copyTarget + c % slots * Chunk, Chunk));
            double copyRate = SampleBytes / Stopwatch.GetElapsedTime(t0).TotalSeconds / 1e9;
            if (Stopwatch.GetTimestamp() < warm)
                continue;
            var sample = new Sample(c2c, ringRate, copyRate);
            samples.Add(sample);
            each?.Invoke(sample);
        }
    }

    /// <summary>B's side: bounces the flag, or copies chunks out of the ring until told otherwise.</summary>
    private static void Consume(long* shared, byte* ring, byte* sink, long slots, int cpu)
    {
        Pin(cpu);
        long consumed = 0;
        for (;;)
        {
            long command = Volatile.Read(ref shared[Command]);
            if (command == Quit) return;
            if (command == Bounce)
            {
                long f = Volatile.Read(ref shared[Flag]);
                if ((f & 1) != 0) Volatile.Write(ref shared[Flag], f + 1);
            }
            else if (command == Drain && consumed < Volatile.Read(ref shared[Produced]))
            {
                new ReadOnlySpan<byte>(ring + consumed % slots * Chunk, Chunk).CopyTo(new Span<byte>(sink, Chunk));
                Volatile.Write(ref shared[Consumed], ++consumed);
            }
        }
    }

    private static void Pin(int cpu)
    {
        ulong mask = 1UL << cpu;
        if (sched_setaffinity(0, sizeof(ulong), &mask) != 0)
            throw new InvalidOperationException($"cannot pin a thread to CPU {cpu}: errno {Marshal.GetLastPInvokeError()}");
    }

    /// <summary>The q-quantile of sorted values (nearest rank).</summary>
    private static double Q(double[] sorted, double q) =>
        sorted.Length == 0 ? double.NaN : sorted[Math.Clamp((int)Math.Ceiling(q * sorted.Length) - 1, 0, sorted.Length - 1)];
}
