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
/// round trips, first with the other device idle, then while a driver thread keeps the other
/// device's controlq full of hostile requests: chains of <c>chain-length</c> descriptors (one
/// indirect table each; 32,768 is the virtio limit), and chains of one descriptor (an ERR each).
/// Prints p50/p99/max of the neighbour's round trip and the hostile requests served per second.
/// Not a BenchmarkDotNet benchmark: it measures a latency distribution under load.
/// Command: <c>dotnet run -c Release --project benchmarks/Vism.Benchmarks -- fairness [round-trips] [chain-length]</c>
/// (default 2000 and 32768); see docs/benchmarks.md.
/// </summary>
public static class Fairness
{
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
        var started = new List<(VhostUserTransport Transport, IsmClient Client, GuestRam Ram)>();
        try
        {
            foreach (string name in (string[])["hostile", "neighbour"])
            {
                DeviceDescription d = DeviceLayout.Compute(name, Virtio.IsmDeviceId, 16 << 20, 1 << 20, 1);
                IsmDevice device = host.AddDevice(d, loop, new InMemoryBackend(64 << 20), null, new DeviceCounters());
                var description = new HostDescription { Gid = 1, StateDirectory = dir, SocketDirectory = dir };
                var transport = new VhostUserTransport(new VhostUserOptions(), d, description, loop, new DeviceCounters(), NullLogger<VhostUserTransport>.Instance);
                loop.InvokeAsync(() => transport.Start(device)).GetAwaiter().GetResult();
                var ram = new GuestRam();
                IsmClient client = IsmClient.Start(VhostUserFrontend.Connect(transport.Endpoint, ram, new VhostUserFrontendOptions()),
                    new IsmClientOptions { EventVq = false, EventIrq = false });
                started.Add((transport, client, ram));
            }
            IsmClient hostile = started[0].Client, neighbour = started[1].Client;
            Row("idle neighbour", neighbour, trips, null);
            using (var flood = new Flood(hostile, started[0].Ram, chain))
                Row($"flood of {chain}-descriptor chains", neighbour, trips, flood);
            using (var flood = new Flood(hostile, started[0].Ram, 1))
                Row("flood of 1-descriptor chains", neighbour, trips, flood);
        }
        finally
        {
            foreach ((VhostUserTransport transport, IsmClient client, GuestRam ram) in started)
            {
                client.Dispose();
                ram.Dispose();
                loop.InvokeAsync(async () => { await transport.DisposeAsync(); return true; }).GetAwaiter().GetResult();
            }
            Directory.Delete(dir, recursive: true);
        }
        return 0;
    }

    private static void Row(string what, IsmClient neighbour, int trips, Flood? flood)
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

    /// <summary>A driver thread keeping every controlq entry of a device available, each a chain of
    /// <c>length</c> one-byte descriptors (indirect when longer than one) that is refused with ERR.</summary>
    private sealed class Flood : IDisposable
    {
        private readonly Thread _thread;
        private volatile bool _stop;
        private long _served;

        public Flood(IsmClient client, GuestRam ram, int length)
        {
            DriverQueue q = client.Driver.Queues[Virtio.ControlQueue];
            ulong buffer = ram.Allocate(64, 16);
            ram.Span(buffer, 64).Clear();
            ram.Span(buffer, 1)[0] = IsmControl.ClassAlloc;
            if (length > 1)
            {
                ulong table = ram.Allocate(16UL * (ulong)length, 16);
                for (int i = 0; i < length - 1; i++)
                    q.RawDescriptorAt(table, i, buffer, 1, DriverQueue.DescNext, (ushort)(i + 1));
                q.RawDescriptorAt(table, length - 1, buffer + 32, 17, DriverQueue.DescWrite, 0);
                for (int d = 0; d < q.Size; d++)
                    q.RawDescriptor(d, table, (uint)(16 * length), DriverQueue.DescIndirect, 0);
            }
            else
            {
                // One read-write buffer: 1 readable byte is too short a header, an ERR each.
                for (int d = 0; d < q.Size; d++)
                    q.RawDescriptor(d, buffer + 32, 17, DriverQueue.DescWrite, 0);
            }
            _thread = new Thread(() =>
            {
                ushort avail = q.AvailIndex;
                ushort last = q.UsedIndex;
                while (!_stop)
                {
                    ushort used = q.UsedIndex;
                    Interlocked.Add(ref _served, (ushort)(used - last));
                    last = used;
                    bool added = false;
                    while ((ushort)(avail - used) < q.Size)
                    {
                        q.RawPublish((ushort)(avail % q.Size));
                        avail++;
                        added = true;
                    }
                    if (added) client.Transport.Kick(Virtio.ControlQueue);
                    else Thread.Yield();
                }
            }) { IsBackground = true, Name = "fairness-flood" };
            _thread.Start();
            SpinWait.SpinUntil(() => Served > 0, TimeSpan.FromSeconds(10));
        }

        public long Served => Volatile.Read(ref _served);

        public void Dispose()
        {
            _stop = true;
            _thread.Join();
        }
    }
}
