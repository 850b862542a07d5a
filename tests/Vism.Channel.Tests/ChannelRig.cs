using Microsoft.Extensions.Logging.Abstractions;
using Vism.Channel;
using Vism.Conformance.Composition;
using Vism.Events.Vq;
using Vism.Memory.File;
using Vism.Testing;
using Vism.Transport.Mmio;
using Vism.Transport.VhostUser;

namespace Vism.Channel.Tests;

/// <summary>A host with real plugins (file memory on tmpfs, the eventq) serving devices through a
/// real transport socket, and a <see cref="ChannelDevice"/> per device connected through that
/// socket the way a VMM is (vhost-user frontend, MMIO socket client).</summary>
internal sealed class ChannelRig : IAsyncDisposable
{
    private readonly TempDir _memory;
    private readonly IComposition _composition;

    private ChannelRig(TempDir memory, IComposition composition, string transport)
    {
        _memory = memory;
        _composition = composition;
        Transport = transport;
    }

    public string Transport { get; }

    public List<ChannelDevice> Devices { get; } = [];

    /// <summary>The socket of device <paramref name="index"/>.</summary>
    public string Endpoint(int index) => _composition.Devices[index].Target.Endpoint;

    /// <summary>The devid of device <paramref name="index"/>.</summary>
    public ulong DevId(int index) => _composition.Devices[index].Device.DevId;

    /// <summary>Composes <paramref name="devices"/> devices with 2 MiB regions; connects channel
    /// devices to the first <paramref name="connected"/> of them.</summary>
    public static async Task<ChannelRig> StartAsync(string transport, ChannelOptions options, int devices = 2, int? connected = null)
    {
        var memory = new TempDir("vism-chan");
        // Region files in /dev/shm (tmpfs); /tmp may be a disk file system.
        string regions = Path.Combine("/dev/shm", Path.GetFileName(memory.Path));
        var composer = new DirectComposer(NullLoggerFactory.Instance, new VhostUserPlugin(), new MmioPlugin(), new FileMemoryPlugin(), new VqEventsPlugin())
            .Configure<FileMemoryOptions>(o => o.Directory = regions);
        IComposition composition = await composer.ComposeAsync(new Combination(transport, "file", "vq"),
            new HostSpec { Devices = devices, RegionSize = 2 << 20, WindowSize = 16 << 20 }, CancellationToken.None);
        var rig = new ChannelRig(memory, composition, transport);
        try
        {
            for (int i = 0; i < (connected ?? devices); i++)
                rig.Devices.Add(ChannelDevice.Open(transport, rig.Endpoint(i), options));
        }
        catch
        {
            await rig.DisposeAsync();
            throw;
        }
        return rig;
    }

    /// <summary>A channel from device 0 (creator, offered to device 1's devid) to device 1.</summary>
    public async Task<(IsmChannel Creator, IsmChannel Acceptor)> PairAsync()
    {
        using ChannelListener listener = await Devices[0].ListenAsync(Devices[1].DevId);
        IsmChannel acceptor = await Devices[1].ConnectAsync(listener.Token);
        IsmChannel creator = await listener.AcceptAsync().WaitAsync(TimeSpan.FromSeconds(30));
        return (creator, acceptor);
    }

    /// <summary>Regions the host still holds.</summary>
    public int Regions => _composition.Host.Snapshot().Regions.Count;

    public async ValueTask DisposeAsync()
    {
        foreach (ChannelDevice d in Devices)
            d.Dispose();
        await _composition.DisposeAsync();
        _memory.Dispose();
        try { Directory.Delete(Path.Combine("/dev/shm", Path.GetFileName(_memory.Path)), recursive: true); } catch (DirectoryNotFoundException) { }
    }
}
