using System.Diagnostics;
using System.Text;
using Microsoft.Extensions.Logging;
using Vism.Abstractions;
using Vism.Driver;
using Vism.Host.Composition;
using Vism.Host.Config;
using Vism.Host.Status;

namespace Vism.Host.Commands;

/// <summary>
/// <c>vism demo</c>: vism's main job without a VMM. Starts the config's devices through their real
/// transports (sockets, memory plugins, event plugins), then connects two built-in peers, each
/// acting as VMM and guest driver of one device through that transport's driver side, and walks
/// them through ALLOC, ATTACH, write, notify, event, read and DETACH, printing each step.
/// </summary>
public static class DemoCommand
{
    private static readonly TimeSpan StepTimeout = TimeSpan.FromSeconds(30);

    public static async Task<int> RunAsync(string file, string[] extraPlugins, LogLevel? logLevel, TextWriter output, TextWriter error, CancellationToken ct)
    {
        var loaded = Cli.Load(file, extraPlugins, error);
        if (loaded is not var (config, catalog)) return ExitCodes.BadConfig;
        using (catalog)
        using (ILoggerFactory logs = Logging.Create(logLevel ?? LogLevel.Warning))
        {
            if (config.Devices.Count < 2)
            {
                error.WriteLine($"vism demo: {file} has {config.Devices.Count} device(s); the demo needs two (one per peer), as config/default.toml has");
                return ExitCodes.BadConfig;
            }
            foreach (DeviceSettings d in config.Devices.Take(2))
                if (DriverConnectors.Find(d.Transport.Registration.Name, d.Transport.Registration.Implementation.Assembly) is null)
                {
                    error.WriteLine($"vism demo: device {d.Name}: nothing can drive transport '{d.Transport.Registration.Name}': it is not one of " +
                        $"{string.Join(", ", DriverConnectors.BuiltIn.Select(c => c.TransportKind))} and its plugin ships no IDriverConnector");
                    return ExitCodes.Failed;
                }
            var demo = new Demo(output);
            output.WriteLine($"vism demo: {file}");
            HostRuntime runtime;
            try
            {
                runtime = await HostRuntime.StartAsync(config, logs).ConfigureAwait(false);
            }
            catch (DeviceStartException ex)
            {
                error.WriteLine($"vism demo: {ex.Message}");
                return ExitCodes.Failed;
            }
            await using (runtime)
            {
                try
                {
                    // The peers block on their driver queues; they run off the loops, like a VMM's vCPU threads.
                    await Task.Run(() => demo.Run(runtime), ct).ConfigureAwait(false);
                }
                catch (Exception ex) when (ex is DemoStepException or DriverTransportException)
                {
                    error.WriteLine($"vism demo: step {demo.Step + 1} failed: {ex.Message}");
                    return ExitCodes.Failed;
                }
                catch (Exception ex)
                {
                    error.WriteLine($"vism demo: step {demo.Step + 1} failed: {ex.GetType().Name}: {ex.Message}");
                    return ExitCodes.Failed;
                }
            }
            output.WriteLine($"vism demo: all {demo.Step} steps passed; devices stopped, sockets removed, memory released");
        }
        return ExitCodes.Ok;
    }

    private sealed class DemoStepException(string message) : Exception(message);

    private sealed class Demo(TextWriter output)
    {
        public int Step { get; private set; }

        private void Say(string text)
        {
            Step++;
            output.WriteLine($"[{Step,2}] {text}");
        }

        private static void Check(bool ok, string what)
        {
            if (!ok) throw new DemoStepException(what);
        }

        public void Run(HostRuntime runtime)
        {
            RunningDevice da = runtime.Devices[0], db = runtime.Devices[1];
            output.WriteLine($"     host gid 0x{runtime.Ism.Gid:x16}, sharing {runtime.Config.Host.Sharing.ToString().ToLowerInvariant()}");
            foreach (RunningDevice d in new[] { da, db })
                output.WriteLine($"     device {d.Settings.Name}: devid {d.Device!.DevId}, {d.Settings.Transport.Registration.Name} at {d.Endpoint}, " +
                    $"memory {d.Settings.Memory.Registration.Name}, events {d.Settings.Events?.Registration.Name ?? "none"}");

            using IsmClient a = Connect("A", da);
            using IsmClient b = Connect("B", db);

            ulong size = a.RegionSize;
            AllocReply alloc = a.Alloc(size);
            Check(alloc.Ok, $"peer A: ALLOC was refused (ack {alloc.Ack}); see the host log");
            Say($"peer A: ALLOC {Sizes.Format(size)} -> token 0x{alloc.Token:x16}, region at offset 0x{alloc.Offset:x} of A's window");

            AttachReply attach = b.Attach(alloc.Token);
            Check(attach.Ok, $"peer B: ATTACH was refused (ack {attach.Ack})");
            Say($"peer B: ATTACH token 0x{alloc.Token:x16} -> the same memory at offset 0x{attach.Offset:x} of B's window");

            Events eventsA = Events.Prepare(a, alloc.Offset), eventsB = Events.Prepare(b, attach.Offset);
            if (eventsB.Describe() is string bindB) Say($"peer B: {bindB}");
            if (eventsA.Describe() is string bindA) Say($"peer A: {bindA}");

            string hello = $"hello from peer A (devid {a.DevId}) at {DateTime.Now:HH:mm:ss}";
            Write(a, alloc.Offset, hello);
            a.Notify(alloc.Offset);
            Say($"peer A: wrote \"{hello}\" and wrote the region's notify slot");

            Say($"peer B: {eventsB.Wait(b, "A's notify")}");
            string readB = Read(b, attach.Offset);
            Check(readB == hello, $"peer B read \"{readB}\", not what A wrote");
            Say($"peer B: read \"{readB}\"");

            string reply = $"hello back from peer B (devid {b.DevId})";
            Write(b, attach.Offset, reply);
            b.Notify(attach.Offset);
            Say($"peer B: wrote \"{reply}\" and notified");
            Say($"peer A: {eventsA.Wait(a, "B's notify")}");
            string readA = Read(a, alloc.Offset);
            Check(readA == reply, $"peer A read \"{readA}\", not what B wrote");
            Say($"peer A: read \"{readA}\"");

            StatusReport during = runtime.Report();
            RegionReport region = during.Regions.Single();
            Say($"status: 1 region of {Sizes.Format(region.Length)}, referenced by devids {string.Join(" and ", region.References.Select(r => r.DevId))}; " +
                $"{string.Join(", ", during.Devices.Select(d => $"{d.Name} uses {Sizes.Format(d.MemoryUsed)}"))}");

            Check(b.Detach(attach.Offset) == IsmControl.AckOk, "peer B: DETACH was refused");
            Say("peer B: DETACH");
            Check(a.Detach(alloc.Offset) == IsmControl.AckOk, "peer A: DETACH was refused");
            Say("peer A: DETACH");

            StatusReport after = WaitFor(runtime, r => r.Regions.Count == 0 && r.Devices.All(d => d.MemoryUsed == 0));
            Check(after.Regions.Count == 0, $"{after.Regions.Count} region(s) still registered after both peers detached");
            Say($"status: no regions; memory used {string.Join(", ", after.Devices.Select(d => $"{d.Name} {Sizes.Format(d.MemoryUsed)}"))} (the region was freed)");
        }

        private IsmClient Connect(string peer, RunningDevice device)
        {
            IDriverTransport transport = device.ConnectDriver();
            IsmClient client;
            try
            {
                client = IsmClient.Start(transport);
            }
            catch
            {
                transport.Dispose();
                throw;
            }
            string events = client.Driver.Has(Features.IsmEventVq) ? "eventq" : client.Driver.Has(Features.IsmEventIrq) ? "per-region IRQ" : "no events";
            Say($"peer {peer}: connected to {device.Settings.Name} through {device.Settings.Transport.Registration.Name} as VMM and driver: " +
                $"gid 0x{client.Gid:x16}, devid {client.DevId}, region size {Sizes.Format(client.RegionSize)}, {events}");
            Check(client.DevId == device.Device!.DevId, $"peer {peer} read devid {client.DevId}, the host gave {device.Device.DevId}");
            return client;
        }

        private static void Write(IsmClient c, ulong offset, string text)
        {
            byte[] bytes = Encoding.UTF8.GetBytes(text);
            Span<byte> region = c.Region(offset, 4 + bytes.Length);
            bytes.CopyTo(region[4..]);
            BitConverter.TryWriteBytes(region, bytes.Length);
        }

        private static string Read(IsmClient c, ulong offset)
        {
            int length = BitConverter.ToInt32(c.Region(offset, 4));
            if (length < 0 || (ulong)length > c.RegionSize - 4) return $"(garbage length {length})";
            return Encoding.UTF8.GetString(c.Region(offset + 4, length));
        }

        private static StatusReport WaitFor(HostRuntime runtime, Func<StatusReport, bool> done)
        {
            // Memory is returned on each device's loop right after DETACH; allow it a moment.
            var sw = Stopwatch.StartNew();
            StatusReport r = runtime.Report();
            while (!done(r) && sw.Elapsed < StepTimeout)
            {
                Thread.Sleep(10);
                r = runtime.Report();
            }
            return r;
        }
    }

    /// <summary>How one peer learns of updates: the eventq, or a per-region vector it binds.</summary>
    private sealed class Events
    {
        private readonly bool _vq;
        private readonly int _vector = -1;
        private readonly ulong _offset;

        private Events(bool vq, int vector, ulong offset)
        {
            _vq = vq;
            _vector = vector;
            _offset = offset;
        }

        public static Events Prepare(IsmClient c, ulong offset)
        {
            if (c.Driver.Has(Features.IsmEventVq)) return new Events(true, -1, offset);
            if (c.Driver.Has(Features.IsmEventIrq) && c.Transport.VectorCount > 0)
            {
                byte ack = c.EventVector(offset, 0);
                if (ack != IsmControl.AckOk) throw new DemoStepException($"EVENT_VECTOR was refused (ack {ack})");
                return new Events(false, 0, offset);
            }
            throw new DemoStepException("the device offers no event feature: give it an [device.events] section");
        }

        public string? Describe() => _vq ? null : $"EVENT_VECTOR binds the region at 0x{_offset:x} to vector {_vector}";

        public string Wait(IsmClient c, string what)
        {
            if (_vq)
            {
                IReadOnlyList<ulong>? offsets = c.WaitEvent(StepTimeout);
                if (offsets is null) throw new DemoStepException($"no eventq event for {what} within {StepTimeout.TotalSeconds}s");
                if (!offsets.Contains(_offset)) throw new DemoStepException($"the eventq reported offsets {string.Join(", ", offsets.Select(o => $"0x{o:x}"))}, not 0x{_offset:x}");
                return $"eventq event: region at offset 0x{_offset:x} updated";
            }
            if (!c.WaitVector(_vector, StepTimeout)) throw new DemoStepException($"vector {_vector} did not fire for {what} within {StepTimeout.TotalSeconds}s");
            return $"vector {_vector} fired: region at offset 0x{_offset:x} updated";
        }
    }
}
