using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using Vism.Channel;
using Vism.Driver;

namespace Vism.Benchmarks;

/// <summary>
/// vism channel vs TCP loopback between the same two processes (docs/benchmarks.md, "Channel"):
/// this process serves two devices as <c>vism run</c> does by default (both on one device loop, the
/// transport's socket, memfd region memory, the eventq unless <c>irq</c> is asked for; <see cref="EventPath.BenchHost"/>) and
/// starts two peer processes, each pinned to its own core with taskset, each reaching its device
/// through the socket. The peers open a TCP connection and a channel to each other and measure, one
/// after the other: bulk throughput (client to server, then a 1-byte ack), and 64-byte
/// request/response round trips event-driven (TCP: blocking sockets; channel: the defaults, then
/// SpinTime 0 so every wait is announced and ends on notify -> update event) and polling (TCP:
/// non-blocking sockets spun on; channel: cursors spun on). A second pair of peers, whose drivers
/// sleep at once on the update event (<c>SpinBeforeBlock</c> 0), repeats the event-driven round
/// trips with no spinning anywhere, and a third pair does so on a host whose loop busy-polls.
/// Not BenchmarkDotNet: it needs two processes on two cores.
/// Command:
/// <c>dotnet run -c Release --project benchmarks/Vism.Benchmarks -- channel [all|vhost-user|mmio] [MiB] [round trips] [loops] [vq|irq]</c>
/// (default: both transports, 1024 MiB, 5000 round trips event-driven and 50000 polling, 1 device loop).
/// </summary>
public static class ChannelBenchmark
{
    private const int Message = 64;
    private const int Chunk = 256 * 1024;

    public static int Run(string[] args)
    {
        string[] transports = args.Length > 0 && args[0] != "all" ? [args[0]] : ["vhost-user", "mmio"];
        int mib = args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 1024;
        int trips = args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 5000;
        int loops = args.Length > 3 ? int.Parse(args[3], CultureInfo.InvariantCulture) : 1;
        string events = args.Length > 4 ? args[4] : "vq";
        if (events is not ("vq" or "irq"))
        {
            Console.Error.WriteLine($"channel: events kind '{events}' is not vq or irq");
            return 2;
        }
        int failed = 0;
        foreach (string transport in transports)
        {
            failed |= RunAsync(transport, mib, trips, loops, events, Full).GetAwaiter().GetResult();
            failed |= RunAsync(transport, 0, trips, loops, events, NoSpin).GetAwaiter().GetResult();
            failed |= RunAsync(transport, 0, trips, loops, events, NoSpinBusyPoll).GetAwaiter().GetResult();
        }
        return failed;
    }

    /// <summary>One pair of peers on a fresh host: <see cref="Full"/> measures everything with the
    /// driver's defaults; <see cref="NoSpin"/> opens the devices with <c>SpinBeforeBlock</c> 0 and
    /// measures only the event-driven round trips, where every channel wait then sleeps at once;
    /// <see cref="NoSpinBusyPoll"/> is the same with vism's loop busy-polling 200 us after work
    /// (<c>busy-poll = "200us"</c>): the host spins instead of the peers.</summary>
    private static async Task<int> RunAsync(string transport, int mib, int trips, int loops, string events, string variant)
    {
        // vism's defaults: both devices on one loop (`loops = 1`), the eventq (or irq, when asked), the transport's defaults.
        using var host = new EventPath.BenchHost(
            new EventPath.Setting(transport, transport, events, loops, 0, true, BusyPollUs: variant == NoSpinBusyPoll ? 200 : 0), 8 << 20);
        Console.WriteLine($"channel benchmark ({variant}): transport {transport}, events {events}, {loops} device loop(s), 8 MiB region (rings of {ChannelLayout.RingSize(8 << 20) >> 10} KiB), {mib} MiB bulk, {trips} round trips of {Message} bytes; "
            + $"{Environment.ProcessorCount} CPUs; server on CPU 0, client on CPU 1; load average before: {File.ReadAllText("/proc/loadavg").Trim()}");
        using Process server = StartPeer(0, ["server", transport, host.Endpoints[0], host.DevIds[1].ToString(CultureInfo.InvariantCulture), variant, events]);
        string? hello = await server.StandardOutput.ReadLineAsync();
        if (hello is null || !hello.StartsWith("listen ", StringComparison.Ordinal))
            throw new InvalidOperationException($"the server peer said '{hello}': {await server.StandardError.ReadToEndAsync()}");
        string[] parts = hello.Split(' ');
        using Process client = StartPeer(1, ["client", transport, host.Endpoints[1], parts[1], parts[2],
            mib.ToString(CultureInfo.InvariantCulture), trips.ToString(CultureInfo.InvariantCulture), variant, events]);
        Task<string> serverErrors = server.StandardError.ReadToEndAsync();
        Task<string> clientErrors = client.StandardError.ReadToEndAsync();
        while (await client.StandardOutput.ReadLineAsync() is { } line)
            Console.WriteLine(line);
        await Task.WhenAll(client.WaitForExitAsync(), server.WaitForExitAsync()).WaitAsync(TimeSpan.FromMinutes(10));
        Console.WriteLine($"load average after: {File.ReadAllText("/proc/loadavg").Trim()}");
        if (client.ExitCode != 0 || server.ExitCode != 0)
        {
            Console.Error.WriteLine($"client exit {client.ExitCode}: {await clientErrors}\nserver exit {server.ExitCode}: {await serverErrors}");
            return 1;
        }
        return 0;
    }

    private static Process StartPeer(int cpu, string[] args)
    {
        var psi = new ProcessStartInfo("taskset") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add(cpu.ToString(CultureInfo.InvariantCulture));
        string self = Environment.ProcessPath ?? "dotnet";
        psi.ArgumentList.Add(self);
        if (Path.GetFileNameWithoutExtension(self) == "dotnet")
            psi.ArgumentList.Add(typeof(ChannelBenchmark).Assembly.Location);
        psi.ArgumentList.Add("channel-peer");
        foreach (string a in args)
            psi.ArgumentList.Add(a);
        return Process.Start(psi) ?? throw new InvalidOperationException("cannot start a peer");
    }

    private const string Full = "defaults", NoSpin = "no-spin", NoSpinBusyPoll = "no-spin-busy-poll";

    /// <summary>Whether the peers' waits sleep at once (both no-spin variants).</summary>
    private static bool Sleeps(string variant) => variant is NoSpin or NoSpinBusyPoll;

    /// <summary>One request/response phase: TCP (blocking or spun-on non-blocking socket) or the
    /// channel (wait mode, spin before announcing a wait), over <c>trips x Scale</c> round trips.</summary>
    private sealed record Phase(bool Tcp, bool Poll, TimeSpan? Spin = null, int Scale = 1);

    /// <summary>The phases, in order (both peers run the same list).</summary>
    private static Phase[] Phases(string variant) => Sleeps(variant)
        ? [new(Tcp: true, Poll: false), new(Tcp: false, Poll: false, Spin: TimeSpan.Zero)]
        : [new(Tcp: true, Poll: false), new(Tcp: false, Poll: false), new(Tcp: false, Poll: false, Spin: TimeSpan.Zero),
            new(Tcp: true, Poll: true, Scale: 10), new(Tcp: false, Poll: true, Scale: 10)];

    /// <summary>A peer process: <c>channel-peer server KIND SOCKET PEER-DEVID VARIANT EVENTS</c> or
    /// <c>channel-peer client KIND SOCKET TOKEN PORT MIB TRIPS VARIANT EVENTS</c>.</summary>
    public static int Peer(string[] args) => args[0] == "server" ? Server(args).GetAwaiter().GetResult() : Client(args).GetAwaiter().GetResult();

    /// <summary>The device with the default channel options: bulk transfers run as a user gets them
    /// (event mode, 20 us spin); the no-spin variant's driver sleeps at once on the update event.</summary>
    private static ChannelDevice Open(string kind, string socket, string variant, string events) =>
        ChannelDevice.Open(kind, socket, vectors: events == "irq" ? 1 : 0, clientOptions: Sleeps(variant) ? new IsmClientOptions { SpinBeforeBlock = TimeSpan.Zero } : null);

    private static async Task<int> Server(string[] args)
    {
        using ChannelDevice device = Open(args[1], args[2], args[4], args[5]);
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        using ChannelListener offer = await device.ListenAsync(ulong.Parse(args[3], CultureInfo.InvariantCulture));
        Console.WriteLine($"listen 0x{offer.Token:x} {((IPEndPoint)listener.LocalEndpoint).Port}");
        Console.Out.Flush();
        // Synchronous accept and connect: a socket once used asynchronously is non-blocking inside
        // .NET, and its "blocking" receives then wait through the socket engine thread (an extra
        // wake-up per message that a TCP user who blocks does not pay).
        using Socket tcp = listener.AcceptSocket();
        tcp.NoDelay = true;
        using IsmChannel channel = await offer.AcceptAsync();
        var buffer = new byte[Chunk];
        // The same phases as the client, in the same order.
        long bulk = ReadLong(tcp);
        if (bulk > 0)
        {
            for (long got = 0; got < bulk;)
                got += tcp.Receive(buffer);
            tcp.Send(buffer.AsSpan(0, 1));
            foreach (ChannelWaitMode mode in new[] { ChannelWaitMode.Event, ChannelWaitMode.Poll })
            {
                channel.WaitMode = mode;
                for (long got = 0; got < bulk;)
                    got += channel.ReadSome(buffer);
                channel.WriteAll(buffer.AsSpan(0, 1));
            }
        }
        int trips = (int)ReadLong(tcp);
        TimeSpan defaultSpin = channel.SpinTime;
        foreach (Phase phase in Phases(args[4]))
        {
            if (phase.Tcp)
            {
                EchoTcp(tcp, buffer, trips * phase.Scale, phase.Poll);
                continue;
            }
            channel.WaitMode = phase.Poll ? ChannelWaitMode.Poll : ChannelWaitMode.Event;
            channel.SpinTime = phase.Spin ?? defaultSpin;
            EchoChannel(channel, buffer, trips * phase.Scale);
        }
        channel.Close();
        return 0;
    }

    private static async Task<int> Client(string[] args)
    {
        string variant = args[7];
        using ChannelDevice device = Open(args[1], args[2], variant, args[8]);
        ulong token = ulong.Parse(args[3].AsSpan(2), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
        using var tcp = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        tcp.Connect(IPAddress.Loopback, int.Parse(args[4], CultureInfo.InvariantCulture)); // synchronous: see Server
        using IsmChannel channel = await device.ConnectAsync(token);
        long bulk = long.Parse(args[5], CultureInfo.InvariantCulture) << 20;
        int trips = int.Parse(args[6], CultureInfo.InvariantCulture);
        var buffer = new byte[Chunk];
        Random.Shared.NextBytes(buffer);

        WriteLong(tcp, bulk);
        if (bulk > 0)
        {
            double tcpBulk = Time(() =>
            {
                for (long sent = 0; sent < bulk; sent += Chunk)
                    tcp.Send(buffer);
                tcp.Receive(buffer.AsSpan(0, 1));
            });
            double tcpRate = bulk / tcpBulk / (1 << 20);
            foreach (ChannelWaitMode mode in new[] { ChannelWaitMode.Event, ChannelWaitMode.Poll })
            {
                channel.WaitMode = mode;
                double channelBulk = Time(() =>
                {
                    for (long sent = 0; sent < bulk; sent += Chunk)
                        channel.WriteAll(buffer);
                    channel.ReadSome(buffer.AsSpan(0, 1));
                });
                double channelRate = bulk / channelBulk / (1 << 20);
                Console.WriteLine($"| throughput, {Chunk >> 10} KiB writes, channel {(mode == ChannelWaitMode.Event ? "event-driven (20 us spin)" : "polling")} | TCP loopback {tcpRate:F0} MiB/s | channel {channelRate:F0} MiB/s | channel/TCP x{channelRate / tcpRate:F1} |");
            }
        }

        WriteLong(tcp, trips);
        TimeSpan defaultSpin = channel.SpinTime;
        double[]? tcpEvent = null, tcpPoll = null;
        foreach (Phase phase in Phases(variant))
        {
            if (phase.Tcp)
            {
                double[] rtt = PingTcp(tcp, buffer, trips * phase.Scale, phase.Poll);
                if (phase.Poll) tcpPoll = rtt;
                else tcpEvent = rtt;
                continue;
            }
            channel.WaitMode = phase.Poll ? ChannelWaitMode.Poll : ChannelWaitMode.Event;
            channel.SpinTime = phase.Spin ?? defaultSpin;
            double[] channelRtt = PingChannel(channel, buffer, trips * phase.Scale);
            string what = phase.Poll ? "64 B request/response, polling"
                : variant == NoSpin ? "64 B request/response, event-driven, no spin (SpinTime 0, SpinBeforeBlock 0: every wait sleeps)"
                : variant == NoSpinBusyPoll ? "64 B request/response, event-driven, no spin in the peers, vism's loop busy-polls 200 us"
                : phase.Spin == TimeSpan.Zero ? "64 B request/response, event-driven, SpinTime 0 (every wait announced: notify -> event, 50 us event spin)"
                : $"64 B request/response, event-driven, defaults (SpinTime {defaultSpin.TotalMicroseconds:F0} us, then the event)";
            Report(what, (phase.Poll ? tcpPoll : tcpEvent)!, channelRtt);
        }
        return 0;
    }

    private static void Report(string what, double[] tcp, double[] channel)
    {
        double tm = Percentile(tcp, 50), cm = Percentile(channel, 50);
        Console.WriteLine($"| {what} | TCP loopback median {tm:F2} us, p99 {Percentile(tcp, 99):F2} us | channel median {cm:F2} us, p99 {Percentile(channel, 99):F2} us | channel/TCP x{cm / tm:F3} |");
    }

    private static double Percentile(double[] sorted, int p) => sorted[Math.Min(sorted.Length - 1, sorted.Length * p / 100)];

    private static double Time(Action action)
    {
        long start = Stopwatch.GetTimestamp();
        action();
        return Stopwatch.GetElapsedTime(start).TotalSeconds;
    }

    private static double[] PingTcp(Socket tcp, byte[] buffer, int trips, bool poll)
    {
        tcp.Blocking = !poll;
        var rtt = new double[trips];
        for (int i = -1000; i < trips; i++) // 1000 warm-up round trips
        {
            long start = Stopwatch.GetTimestamp();
            tcp.Send(buffer.AsSpan(0, Message));
            ReceiveExactly(tcp, buffer.AsSpan(0, Message));
            if (i >= 0) rtt[i] = Stopwatch.GetElapsedTime(start).TotalMicroseconds;
        }
        tcp.Blocking = true;
        Array.Sort(rtt);
        return rtt;
    }

    private static void EchoTcp(Socket tcp, byte[] buffer, int trips, bool poll)
    {
        tcp.Blocking = !poll;
        for (int i = -1000; i < trips; i++)
        {
            ReceiveExactly(tcp, buffer.AsSpan(0, Message));
            tcp.Send(buffer.AsSpan(0, Message));
        }
        tcp.Blocking = true;
    }

    /// <summary>Reads exactly <paramref name="into"/>.Length bytes; on a non-blocking socket it spins.</summary>
    private static void ReceiveExactly(Socket tcp, Span<byte> into)
    {
        for (int got = 0; got < into.Length;)
        {
            int n = tcp.Receive(into[got..], SocketFlags.None, out SocketError error);
            if (error == SocketError.WouldBlock) continue;
            if (error != SocketError.Success || n == 0) throw new SocketException((int)error);
            got += n;
        }
    }

    private static double[] PingChannel(IsmChannel channel, byte[] buffer, int trips)
    {
        var rtt = new double[trips];
        for (int i = -1000; i < trips; i++)
        {
            long start = Stopwatch.GetTimestamp();
            channel.Send(buffer.AsSpan(0, Message));
            if (channel.Receive(buffer) != Message) throw new InvalidOperationException("short reply");
            if (i >= 0) rtt[i] = Stopwatch.GetElapsedTime(start).TotalMicroseconds;
        }
        Array.Sort(rtt);
        return rtt;
    }

    private static void EchoChannel(IsmChannel channel, byte[] buffer, int trips)
    {
        for (int i = -1000; i < trips; i++)
        {
            int n = channel.Receive(buffer);
            channel.Send(buffer.AsSpan(0, n));
        }
    }

    private static void WriteLong(Socket tcp, long value)
    {
        Span<byte> b = stackalloc byte[8];
        System.Buffers.Binary.BinaryPrimitives.WriteInt64LittleEndian(b, value);
        tcp.Send(b);
    }

    private static long ReadLong(Socket tcp)
    {
        Span<byte> b = stackalloc byte[8];
        ReceiveExactly(tcp, b);
        return System.Buffers.Binary.BinaryPrimitives.ReadInt64LittleEndian(b);
    }
}
