using System.Runtime.InteropServices;

namespace Vism.PluginKit;

/// <summary>A failed system call: what was being done, and the errno the kernel gave.</summary>
public sealed class NativeCallException : IOException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="operation">The call and its arguments, e.g. <c>fallocate(4096 bytes)</c>.</param>
    /// <param name="errno">The errno value (e.g. 28 for ENOSPC).</param>
    public NativeCallException(string operation, int errno)
        : base($"{operation}: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno})", -errno)
    {
        Operation = operation;
        Errno = errno;
    }

    /// <summary>The call that failed.</summary>
    public string Operation { get; }

    /// <summary>The errno value.</summary>
    public int Errno { get; }

    /// <summary>An exception for the errno of the last P/Invoke made with SetLastError.</summary>
    internal static NativeCallException Last(string operation) => new(operation, Marshal.GetLastPInvokeError());
}
