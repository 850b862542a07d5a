using Vism.Abstractions;
using Vism.Driver;
using Vism.Driver.Mmio;
using Vism.Driver.VhostUser;

namespace Vism.Host.Composition;

/// <summary>
/// The driver side of each in-repo transport, for <c>vism demo</c>: given a running device, connect
/// to its endpoint as its VMM and guest driver would. One small factory per transport kind.
/// </summary>
public static class DriverConnectors
{
    private static readonly Dictionary<string, Func<RunningDevice, IDriverTransport>> Factories = new(StringComparer.Ordinal)
    {
        // What QEMU's vhost-user-test-device-pci does, with guest RAM the connection owns.
        ["vhost-user"] = d => OwningRam.Wrap(new GuestRam(), ram => VhostUserFrontend.Connect(d.Endpoint, ram,
            new VhostUserFrontendOptions { DeviceId = d.Settings.Description.VirtioId, VectorCount = d.Transport!.VectorCount })),
        // A VMM speaking the MMIO socket protocol (docs/mmio-protocol.md); it owns its RAM.
        ["mmio"] = d => MmioVmmClient.Connect(d.Endpoint),
    };

    /// <summary>Adds or replaces the driver side of <paramref name="kind"/> (tests add their in-process transport).</summary>
    internal static void Register(string kind, Func<RunningDevice, IDriverTransport> connect)
    {
        lock (Factories) Factories[kind] = connect;
    }

    /// <summary>The transport kinds the demo can drive.</summary>
    public static IEnumerable<string> Kinds
    {
        get { lock (Factories) return Factories.Keys.Order(StringComparer.Ordinal).ToList(); }
    }

    /// <summary>Whether the demo can drive <paramref name="kind"/>.</summary>
    public static bool Supports(string kind)
    {
        lock (Factories) return Factories.ContainsKey(kind);
    }

    /// <summary>Connects to <paramref name="device"/>'s endpoint through its transport's driver side.</summary>
    public static IDriverTransport Connect(RunningDevice device)
    {
        Func<RunningDevice, IDriverTransport> connect;
        lock (Factories) connect = Factories[device.Settings.Transport.Registration.Name];
        return connect(device);
    }

    /// <summary>A driver transport that also owns the guest RAM it was given, and frees it last.</summary>
    private sealed class OwningRam(IDriverTransport inner, GuestRam ram) : IDriverTransport
    {
        public static IDriverTransport Wrap(GuestRam ram, Func<GuestRam, IDriverTransport> connect)
        {
            try
            {
                return new OwningRam(connect(ram), ram);
            }
            catch
            {
                ram.Dispose();
                throw;
            }
        }

        public GuestRam Ram => inner.Ram;
        public uint DeviceId => inner.DeviceId;
        public int VectorCount => inner.VectorCount;
        public ulong ReadDeviceFeatures() => inner.ReadDeviceFeatures();
        public void WriteDriverFeatures(ulong features) => inner.WriteDriverFeatures(features);
        public DeviceStatus ReadStatus() => inner.ReadStatus();
        public void WriteStatus(DeviceStatus status) => inner.WriteStatus(status);
        public void ReadConfig(uint offset, Span<byte> destination) => inner.ReadConfig(offset, destination);
        public uint ReadConfigGeneration() => inner.ReadConfigGeneration();
        public ushort MaxQueueSize(int index) => inner.MaxQueueSize(index);
        public void StartQueue(int index, QueueSettings settings) => inner.StartQueue(index, settings);
        public void Kick(int index) => inner.Kick(index);
        public bool WaitQueue(int index, TimeSpan timeout) => inner.WaitQueue(index, timeout);
        public ulong ShmLength(ShmId id) => inner.ShmLength(id);
        public nint ShmAddress(ShmId id) => inner.ShmAddress(id);
        public void WriteNotify(ulong offset, byte value = 1) => inner.WriteNotify(offset, value);
        public bool WaitVector(int vector, TimeSpan timeout) => inner.WaitVector(vector, timeout);

        public void Dispose()
        {
            inner.Dispose();
            ram.Dispose();
        }
    }
}
