using System.Diagnostics;
using Microsoft.Extensions.Logging.Abstractions;
using Vism.Abstractions;
using Vism.Core;
using Vism.Core.InMemory;
using Vism.Driver;
using Vism.Driver.VhostUser;
using Vism.Native;
using Vism.Transport.VhostUser;

namespace Vism.Benchmarks;

/// <summary>
/// What a flooding device costs its neighbour on the same loop (issue 13.4): two vhost-user devices
/// on one loop, each started by vism's own frontend. The neighbour times ALLOC (4 KiB) + DETACH
/// round trips, first with the other device idle, then while a <see cref="ControlqFlood"/> keeps the
/// other device's 256-entry controlq full of hostile requests: chains of one descriptor (an ERR
/// each), chains of 256 descriptors (the queue size, the longest a chain may be; one indirect table
/// each, an ERR each), and last chains of <c>chain-length</c> descriptors (default 32,768, one
/// indirect table each), which break virtio's chain-length rule: the first is refused unread and
/// the device is marked DEVICE_NEEDS_RESET, so the flood goes on against a device that ignores it.
/// Prints p50/p99/max of the neighbour's round trip and the hostile requests served per second.
/// Not a BenchmarkDotNet benchmark: it measures a latency distribution under load.
/// Command: <c>dotnet run -c Release --project benchmarks/Vism.Benchmarks -- fairness [round-trips] [chain-length]</c>
/// (default 2000 and 32768); see docs/benchmarks.md.
/// </summary>
public static class Fairness
{
    /// <summary>Entries of the hostile device's controlq: vism's largest queue.</summary>
    private const ushort HostileQueueSize = IsmDevice.DefaultMaxQueueSize;

    public static int Run(string[] args)
    {
        int trips = args.Length > 0 ? int.Parse(args[0]) : 2000;
        int chain = args.Length > 1 ? int.Parse(args[1]) : 32768;
        Console.WriteLine($"fairness: {trips} ALLOC+DETACH round trips per row, {Environment.ProcessorCount} CPUs, load average {File.ReadAllText("/proc/loadavg").Trim()}, "
            + $"limits {DeviceLimits.Default}");
        string dir = Path.Combine("/tmp", $"vism-fairness-{Environment.ProcessId}");
        Directory.CreateDirectory(dir);
        using var loop = new EventLoop("fairness");
        using var host = new IsmHost(new IsmHostOptions { Gid = 1 }, NullLoggerFactory.Instance);
        var started = new List<(IsmDevice Device, DeviceCounters Counters, VhostUserTransport Transport, IsmClient Client, GuestRam Ram)>();
        try
        {
            foreach (string name in (string[])["hostile", "neighbour"])
            {
                DeviceDescription d = DeviceLayout.Compute(name, Virtio.IsmDeviceId, 16 << 20, 1 << 20, 1);
                var counters = new DeviceCounters();
                IsmDevice device = host.AddDevice(d, loop, new InMemoryBackend(64 << 20), null, counters);
                var description = new HostDescription { Gid = 1, StateDirectory = dir, SocketDirectory = dir };
                var transport = new VhostUserTransport(new VhostUserOptions(), d, description, loop, new DeviceCounters(), NullLogger<VhostUserTransport>.Instance);
                loop.InvokeAsync(() => transport.Start(device)).GetAwaiter().GetResult();
                var ram = new GuestRam();
                IsmClient client = IsmClient.Start(VhostUserFrontend.Connect(transport.Endpoint, ram, new VhostUserFrontendOptions()),
                    new IsmClientOptions { EventVq = false, EventIrq = false, QueueSize = name == "hostile" ? HostileQueueSize : new IsmClientOptions().QueueSize });
                started.Add((device, counters, transport, client, ram));
            }
            (IsmDevice hostileDevice, DeviceCounters hostileCounters, _, IsmClient hostile, _) = started[0];
            IsmClient neighbour = started[1].Client;
            Row("idle neighbour", neighbour, trips, null);
            using (var flood = Start(hostile, 1, f => f.Served > 0))
                Row("flood of 1-descriptor chains", neighbour, trips, flood);
            using (var flood = Start(hostile, HostileQueueSize, f => f.Served > 0))
                Row($"flood of {HostileQueueSize}-descriptor chains", neighbour, trips, flood);
            // Last: a chain longer than the queue leaves the hostile device needing a reset.
            using (var flood = Start(hostile, chain, f => f.Served > 0 || (hostileDevice.Status & DeviceStatus.DeviceNeedsReset) != 0))
            {
                Row($"flood of {chain}-descriptor chains", neighbour, trips, flood);
                Console.WriteLine($"  hostile device after it: status {hostileDevice.Status}, err.ring.chain-over-queue-size {hostileCounters.Get("err.ring.chain-over-queue-size")}, "
                    + $"flood kicks {flood.Kicks}, hostile requests answered {flood.Served}");
            }
        }
        finally
        {
            foreach ((_, _, VhostUserTransport transport, IsmClient client, GuestRam ram) in started)
            {
                client.Dispose();
                ram.Dispose();
                loop.InvokeAsync(async () => { await transport.DisposeAsync(); return true; }).GetAwaiter().GetResult();
            }
            Directory.Delete(dir, recursive: true);
        }
        return 0;
    }

    /// <summary>Starts a flood and waits (up to 10 s) until the device has reacted to it.</summary>
    private static ControlqFlood Start(IsmClient hostile, int length, Func<ControlqFlood, bool> reacted)
    {
        var flood = new ControlqFlood(hostile, length);
        if (!SpinWait.SpinUntil(() => reacted(flood), TimeSpan.FromSeconds(10)))
            Console.WriteLine($"  (the hostile device did not react to chains of {length} in 10 s)");
        return flood;
    }

    private static void Row(string what, IsmClient neighbour, int trips, ControlqFlood? flood)
    {
        var times = new double[trips];
        long served0 = flood?.Served ?? 0;
        var total = Stopwatch.StartNew();
        for (int i = 0; i < trips; i++)
        {
            long t0 = Stopwatch.GetTimestamp();
            AllocReply alloc = neighbour.Alloc(4096);
            if (!alloc.Ok || neighbour.Detach(alloc.Offset) != IsmControl.AckOk) throw new InvalidOperationException("the neighbour's ALLOC or DETACH failed");
            times[i] = Stopwatch.GetElapsedTime(t0).TotalMicroseconds;
        }
        total.Stop();
        Array.Sort(times);
        string hostile = flood is null ? "" : $", hostile requests served {(flood.Served - served0) / total.Elapsed.TotalSeconds:F0}/s";
        Console.WriteLine($"{what,-36} ALLOC+DETACH p50 {times[trips / 2],9:F1} us  p99 {times[trips * 99 / 100],9:F1} us  max {times[^1],9:F1} us{hostile}");
    }
}
