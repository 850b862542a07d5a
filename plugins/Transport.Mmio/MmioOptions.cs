using System.ComponentModel;
using Vism.Abstractions;
using Vism.Native;

namespace Vism.Transport.Mmio;

/// <summary>Options of the <c>mmio</c> transport (<c>[device.transport]</c> with <c>kind = "mmio"</c>).</summary>
public sealed class MmioOptions : UnixSocketOptions, IValidatableOptions, IVectorTransportOptions
{
    /// <summary>Most per-region vectors (each is one interrupt line the VMM wires to an eventfd).</summary>
    public const int MaxVectors = 256;

    /// <summary>The Unix socket the VMM connects to. Empty: <c>&lt;socket-directory&gt;/&lt;device name&gt;.mmio.sock</c>.
    /// A relative path is taken relative to the host's socket directory.</summary>
    [Description("Unix socket the VMM connects to; empty = <socket-directory>/<device name>.mmio.sock; relative paths are under the socket directory")]
    public string SocketPath { get; set; } = "";

    /// <summary>Per-region interrupt vectors offered for VIRTIO_ISM_F_EVENT_IRQ (interrupt lines 1..vectors).</summary>
    [Description("Per-region interrupt vectors offered (VIRTIO_ISM_F_EVENT_IRQ); each is an extra interrupt line the VMM backs with an eventfd (0-256)")]
    public int Vectors { get; set; } = 8;

    /// <inheritdoc />
    int IVectorTransportOptions.EventVectors => Vectors;

    /// <inheritdoc />
    /// <remarks>Null: each vector is an interrupt line of its own (docs/mmio-protocol.md).</remarks>
    string? IVectorTransportOptions.GuestVectorLimitation => null;

    /// <summary>How long the VMM may take to answer a MAP or UNMAP request; a VMM that does not
    /// answer in time is disconnected (its device resets).</summary>
    [Description("Milliseconds the VMM may take to answer a MAP or UNMAP request before it is disconnected (1-600000)")]
    public int MapTimeoutMs { get; set; } = 5000;

    /// <summary>The socket path this device serves (a relative one is relative to the socket
    /// directory, <see cref="HostPaths"/>).</summary>
    /// <param name="host">The host (for its socket directory).</param>
    /// <param name="device">The device (for its name).</param>
    /// <returns>An absolute path.</returns>
    public string ResolveSocketPath(HostDescription host, DeviceDescription device) =>
        host.Socket(string.IsNullOrEmpty(SocketPath) ? $"{device.Name}.mmio.sock" : SocketPath);

    /// <inheritdoc />
    public void Validate(OptionsValidationContext context)
    {
        ValidateAccess(context);
        context.ClaimSocketPath("socket-path", ResolveSocketPath(context.Host, context.Device));
        if (Vectors is < 0 or > MaxVectors)
            context.Error("vectors", $"{Vectors} vectors: choose 0 to {MaxVectors}");
        if (MapTimeoutMs is < 1 or > 600_000)
            context.Error("map-timeout-ms", $"{MapTimeoutMs} ms: choose 1 to 600000");
    }
}
